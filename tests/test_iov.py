"""Inter-occasion variability (IOV) of parameters between visits in virtual trials (#18).

A parameter with IOV is ``g^-1(g(theta_i) + kappa_ik)`` on occasion ``k``, ``kappa_ik ~
N(0, sd^2)``, piecewise constant in time (``tj.Piecewise``, LOCF at the occasion starts)
inside one simulation.
"""

import copy

import numpy as np
import pytest

import twinjax as tj
from twinjax.models import pk
from twinjax.trial import OccasionVariability, SpecError, Trial
from twinjax.trial._variability import Variability, rng_for

OCC = [0.0, 12.0, 24.0]
DURATION = 36.0


def test_occasion_draws_have_the_stated_distribution():
    model = pk.one_compartment("first_order")
    o = OccasionVariability("CL", cv=0.3, occasions=OCC)
    assert o.kappa_sd == pytest.approx(np.sqrt(np.log(1 + 0.09)))
    theta = np.full(20000, 4.0)
    pw = o.piecewise(model, theta, np.random.default_rng(1))
    assert pw.interpolation == "locf"
    np.testing.assert_array_equal(pw.times[0], OCC)
    kappa = np.log(np.asarray(pw.values) / 4.0)  # CL is log-transformed
    np.testing.assert_allclose(kappa.std(axis=0), o.kappa_sd, rtol=0.03)
    np.testing.assert_allclose(kappa.mean(axis=0), 0.0, atol=0.01)
    c = np.corrcoef(kappa.T)
    assert np.max(np.abs(c - np.eye(3))) < 0.03  # independent occasions
    # a fraction (logit transform) stays inside its bounds
    f = OccasionVariability("F", sd=2.0, occasions=OCC).piecewise(
        model, np.full(1000, 0.9), np.random.default_rng(2)
    )
    assert np.all((np.asarray(f.values) > 0) & (np.asarray(f.values) < 1))


def _spec(iov=None, n=300):
    spec = {
        "trial": {"name": "iov", "seed": 11, "duration": DURATION, "save_every": 2.0},
        "population": {
            "model": "pk1_iv",
            "n_per_arm": n,
            "demographics": False,
            "iiv": {"CL": 0.2},
        },
        "arms": [
            {"name": "q12h", "doses": [{"amt": 100.0, "cmt": "central", "ii": 12.0, "addl": 2}]},
        ],
        "endpoints": [
            {"name": "C_10", "kind": "value", "output": "C", "time": 10.0},
            {"name": "C_22", "kind": "value", "output": "C", "time": 22.0},
            {"name": "C_34", "kind": "value", "output": "C", "time": 34.0},
        ],
        "statistics": {"replicates": 5},
    }
    if iov is not None:
        spec["variability"] = {"iov": iov}
    return spec


def test_trial_with_iov_simulates_each_patients_occasion_parameters(tmp_path):
    iov = [{"param": "CL", "cv": 0.4, "occasions": OCC}]
    tr = Trial.from_dict(_spec(iov))
    res = tr.run(progress=False)
    tab = res.table
    assert (tab["status"] == 0).all()
    # the same draws, by hand: each patient's CL on each occasion, then the exact
    # one-compartment IV superposition with a clearance that changes at 12 and 24
    cohort = tr.arm_cohort("q12h")
    o = tr.variability.iov[0]
    pw = o.piecewise(tr.model, np.asarray(cohort.params["CL"]), rng_for(tr.seed, 0, 5))
    cl, V = np.asarray(pw.values), np.asarray(cohort.params["V"])
    # amount just after each dose (doses at 0, 12, 24): A+ = A- exp(-k 12) + 100
    k = cl / V[:, None]
    a = 100.0
    want = []
    for occ in range(3):
        want.append(a * np.exp(-k[:, occ] * 10.0) / V)  # C at 10 h into occasion occ
        a = a * np.exp(-k[:, occ] * 12.0) + 100.0
    for name, w in zip(["C_10", "C_22", "C_34"], want, strict=True):
        np.testing.assert_allclose(tab[name].to_numpy(), w, rtol=1e-5)
    # without IOV the occasion-to-occasion ratio is the same for every patient up to
    # accumulation; with it, the troughs of one patient move independently
    base = Trial.from_dict(_spec()).run(progress=False).table
    r_iov = np.log(tab["C_34"] / tab["C_10"])
    r_base = np.log(base["C_34"] / base["C_10"])
    assert r_iov.std() > 3 * r_base.std()
    assert res.to_json()["variability"]["iov"][0]["param"] == "CL"
    html = res.write(tmp_path / "out").read_text()
    assert "inter-occasion variability of CL" in html


@pytest.mark.parametrize(
    "iov, match",
    [
        ([{"param": "KX", "cv": 0.2, "occasions": OCC}], r"\[variability.iov\]\[0\].param"),
        ([{"param": "CL", "occasions": OCC}], r"\[variability.iov\]\[0\]: give sd"),
        ([{"param": "CL", "sd": 0.1, "cv": 0.1, "occasions": OCC}], "not both"),
        ([{"param": "CL", "sd": 0.1, "occasions": [1.0, 2.0]}], "must start at 0"),
        ([{"param": "CL", "sd": 0.1, "occasions": [0.0, 5.0, 5.0]}], "must increase"),
        ([{"param": "CL", "sd": 0.1, "occasions": [0.0, 40.0]}], "not before the end"),
        ([{"param": "CL", "sd": 0.1, "when": 1}], "unknown key 'when'"),
        (
            [{"param": "CL", "sd": 0.1}, {"param": "CL", "sd": 0.2}],
            r"one occasion variability per parameter, repeated: \['CL'\]",
        ),
    ],
)
def test_bad_iov_specs_are_refused_before_simulating(iov, match):
    with pytest.raises(SpecError, match=match):
        Trial.from_dict(_spec(copy.deepcopy(iov)))


def test_iov_on_a_model_with_its_own_beat_loop_is_refused():
    t = Trial.from_toml("examples/antihypertensive_trial.toml")
    var = Variability(iov=[OccasionVariability("circ.R_AR_SYS", sd=0.1, occasions=[0.0])])
    with pytest.raises(SpecError, match="only its pk.. parameters can have IOV"):
        Trial(
            t.model,
            t.population,
            t.arms,
            t.endpoints,
            duration=t.duration,
            variability=var,
        )


def test_simulate_cohort_takes_piecewise_parameters():
    model = pk.one_compartment()
    cl = tj.Piecewise([0.0, 12.0], np.array([[1.0, 2.0], [3.0, 1.0]]), "locf")
    reg = tj.Regimen([tj.Dose(100.0, "central", 0.0)])
    ts = np.array([6.0, 18.0])
    res = tj.simulate_cohort(model, {"CL": cl, "V": np.array([10.0, 10.0])}, reg, ts)
    c = np.asarray(res["C"])
    k1, k2 = np.array([0.1, 0.3]), np.array([0.2, 0.1])
    want = np.stack([10 * np.exp(-6 * k1), 10 * np.exp(-12 * k1 - 6 * k2)], -1)
    np.testing.assert_allclose(c, want, rtol=1e-5)
