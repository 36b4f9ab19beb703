"""PK-driven exposure (issue #19 item 4): a PK concentration time course paced beat by beat
into CiPAORdv1.0 (twinjax.models.ep._exposure; `twinjax safety` protocol = "exposure")."""

import json
import pathlib
import tomllib

import numpy as np
import pytest

from twinjax.models.ep import _exposure as ex
from twinjax.models.ep._cipa import CiPAORd, compound_params, pace_cipa
from twinjax.trial import SafetyTrial, SpecError

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "cardiac_safety_pk.toml"


def test_free_nM_converts_mass_to_free_molar():
    # 2.5936 ng/mL total of a 441.6 g/mol drug, 35 % unbound -> 2.0557 nM free
    assert ex.free_nM(2.5936e-3, 441.6, 0.35) == pytest.approx(2.0557, rel=1e-4)


def test_exposure_beats_every_beat_and_windows():
    t = np.linspace(0.0, 2.0, 121)  # h
    c = 10.0 * t  # nM, linear: interpolation is exact
    tb, cb = ex.exposure_beats(t, c, bcl_ms=2000.0, hours=1.0)
    assert len(tb) == 1800 and tb[1] - tb[0] == pytest.approx(2000.0 / 3.6e6)
    np.testing.assert_allclose(cb, 10.0 * tb, rtol=1e-12)
    tb, cb = ex.exposure_beats(t, np.stack([c, 2 * c]), bcl_ms=1000.0, hours=1.5,
                               sample_every_h=0.5, window=3)  # fmt: skip
    assert tb.shape == (9,) and cb.shape == (9, 2)
    np.testing.assert_allclose(tb[[0, 3, 6]], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(tb[1] - tb[0], 1000.0 / 3.6e6)
    np.testing.assert_allclose(cb[:, 1], 2 * cb[:, 0])
    with pytest.raises(ValueError, match="outside the PK solution"):
        ex.exposure_beats(t, c, bcl_ms=2000.0, hours=3.0)


def test_pace_exposure_equals_fixed_concentration_pacing_and_follows_the_course():
    """A constant course reproduces pace_cipa exactly; a step in the course is felt from
    the beat it starts in (drug-bound hERG appears only then)."""
    model = CiPAORd()
    c = 40.0  # nM dofetilide (20 x free Cmax)
    fixed = pace_cipa(model, compound_params(model, "dofetilide", c), 2)
    course = ex.pace_exposure(model, "dofetilide", [c, c])
    for k in ("qNet", "APD90", "max_dv"):
        np.testing.assert_allclose(course.biomarkers[k], fixed.biomarkers[k], rtol=1e-12)
    step = ex.pace_exposure(model, "dofetilide", [0.0, c])
    q = np.asarray(step.biomarkers["qNet"])
    assert q[0] == pytest.approx(0.0697, rel=0.01)  # control beat
    first = ex.pace_exposure(model, "dofetilide", [0.0])  # the control beat alone
    then = pace_cipa(model, compound_params(model, "dofetilide", c), 1, y0=first.state)
    assert q[1] == pytest.approx(float(then.biomarkers["qNet"][0]), rel=1e-12)
    assert q[1] < q[0] - 1e-3  # dofetilide lowers qNet from the first drug beat
    assert float(step.state["Obound"] + step.state["Cbound"] + step.state["IObound"]) > 0
    with pytest.raises(ValueError, match="finite and >= 0"):
        ex.pace_exposure(model, "dofetilide", [1.0, -1.0])
    with pytest.raises(KeyError, match="unknown compound"):
        ex.pace_exposure(model, "aspirinx", [1.0])


def _spec(**change):
    d = tomllib.loads(EXAMPLE.read_text())
    d["safety"]["exposure"].update(change)
    return d


def test_exposure_example_spec_reads():
    st = SafetyTrial.from_toml(EXAMPLE)
    assert st.protocol == "exposure" and st.compounds == ("dofetilide",)
    assert st.exposure["n_doses"] == 2 and st.exposure["hours"] == 24.0


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(dose_mg=0), "\\[safety.exposure\\].dose_mg: dose_mg must be a positive number"),
        (dict(fu=1.5), "fu must be in \\(0, 1\\]"),
        (dict(n_doses=1.5), "n_doses must be an integer >= 1"),
        (dict(dose=1.0), "\\[safety.exposure\\].dose: unknown key 'dose'"),
    ],
)
def test_exposure_spec_errors_name_the_key(change, match):
    with pytest.raises(SpecError, match=match):
        SafetyTrial.from_dict(_spec(**change))


def test_exposure_spec_needs_its_table_and_one_compound():
    d = tomllib.loads(EXAMPLE.read_text())
    del d["safety"]["exposure"]["CL_L_per_h"]
    with pytest.raises(SpecError, match="CL_L_per_h: missing"):
        SafetyTrial.from_dict(d)
    d = tomllib.loads(EXAMPLE.read_text())
    d["safety"]["compounds"] = ["dofetilide", "sotalol"]
    with pytest.raises(SpecError, match="exactly one compound"):
        SafetyTrial.from_dict(d)
    with pytest.raises(SpecError, match="needs a table \\[safety.exposure\\]"):
        SafetyTrial.from_dict({"safety": {"protocol": "exposure", "compounds": ["dofetilide"]}})
    with pytest.raises(SpecError, match="exposure is read only by protocol = 'exposure'"):
        SafetyTrial.from_dict({"safety": {"exposure": {"hours": 1.0}}})


@pytest.mark.slow
def test_exposure_run_over_a_day_of_the_example_regimen(tmp_path):
    """The example's dofetilide-like regimen (500 ug BID) over 24 h, paced in windows of 5
    beats every 3 h (40 beats): the paced concentrations are the PK's, the free Cmax is the
    CiPA one, and dofetilide's slow hERG binding accumulates: by the last window qNet is
    below and APD90 above the control beat's, although the concentration is below its peak.
    (The example itself paces 10 beats every hour: 240 beats, 559 s here under load.)"""
    st = SafetyTrial.from_dict(_spec(sample_every_h=3.0, window=5))
    res = st.run(tmp_path / "pk")
    tab = res["exposure"]
    assert len(tab) == 40
    np.testing.assert_allclose(tab["time_h"].iloc[::5], [0, 3, 6, 9, 12, 15, 18, 21])
    assert tab["conc_nM"].iloc[0] == 0.0
    assert res["free_cmax_nM"] == pytest.approx(2.0, rel=0.1)  # ~ the CiPA free Cmax, 2 nM
    pk = np.loadtxt(tmp_path / "pk" / "pk.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(
        tab["conc_nM"], np.interp(tab["time_h"], pk[:, 0], pk[:, 2]), rtol=1e-12
    )
    q, apd = tab["qNet"].to_numpy(), tab["APD90"].to_numpy()
    assert q[0] == pytest.approx(0.0697, rel=0.01)  # drug-free first beat
    assert q[-1] < q[0] - 5e-4 and apd[-1] > apd[0] + 1.0
    assert tab["conc_nM"].iloc[-1] < 0.8 * res["free_cmax_nM"]
    rec = json.loads((tmp_path / "pk" / "safety.json").read_text())
    assert rec["beats_paced"] == 40 and rec["status"] == 0
    assert (tmp_path / "pk" / "safety.png").stat().st_size > 1000
