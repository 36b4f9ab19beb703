"""UVA/Padova against an independent implementation: simglucose's ``T1DPatient``.

simglucose integrates the same 13-state model with SciPy's dopri5 in 1-min steps,
with meals in g/min and insulin in U/min held over each step; we drive its
patient class directly (no controller, no sensor) with the same inputs.
"""

import warnings

import numpy as np
import pytest

from twinjax.models import glucose as gl

MEALS = {420: 50.0, 720: 70.0, 1140: 80.0}  # 7:00, 12:00, 19:00
PATIENTS = ["adolescent#001", "adult#001", "child#001"]


def _t1dpatient():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation in simglucose
        mod = pytest.importorskip("simglucose.patient.t1dpatient")
    return mod.T1DPatient, mod.Action


def reference(name, insulin=None, minutes=1440, every=5):
    """simglucose plasma glucose (mg/dL) every ``every`` min; insulin: U/min per minute."""
    T1DPatient, Action = _t1dpatient()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pt = T1DPatient.withName(name)
        basal = pt._params.u2ss * pt._params.BW / 6000  # U/min
        out = []
        for k in range(minutes):
            if k % every == 0:
                out.append(pt.state[3] / pt._params.Vg)
            u = basal if insulin is None else float(insulin[k])
            pt.step(Action(CHO=MEALS.get(k, 0.0), insulin=u))
    return np.asarray(out)


def rms_pct(a, b):
    return 100 * np.sqrt(np.mean((np.asarray(a) - b) ** 2)) / np.mean(b)


@pytest.mark.slow
def test_open_loop_meal_day_matches_simglucose():
    """Basal insulin at u2ss, meals of 50/70/80 g: RMS difference < 1 % over 24 h."""
    r = gl.simulate_closed_loop(gl.patient_params(PATIENTS), gl.OpenLoop(), meals=gl.daily_meals(1))
    for i, name in enumerate(PATIENTS):
        ref = reference(name)
        assert float(np.max(ref)) > float(ref[0]) + 40  # the meals do raise glucose
        err = rms_pct(r.bg[i], ref)
        print(f"{name}: RMS difference {err:.2e} %")
        assert err < 1.0, name
        assert err < 1e-3, name  # in practice the two agree to solver tolerance


@pytest.mark.slow
def test_basal_bolus_insulin_delivery_matches_simglucose():
    """The insulin the twinjax controller delivered, replayed into simglucose."""
    name = "adult#002"
    p = gl.patient_params([name])
    q = gl.therapy_params([name])
    r = gl.simulate_closed_loop(p, gl.BasalBolus(q["CR"], q["CF"]), meals=gl.daily_meals(1))
    per_minute = np.repeat(np.asarray(r.insulin[0]), 5)
    ref = reference(name, insulin=per_minute)
    assert rms_pct(r.bg[0], ref) < 1e-3
