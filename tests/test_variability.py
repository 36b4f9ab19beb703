"""Trial variability: measurement error, placebo response, dropout, adherence, spec checks."""

import copy
import pathlib
import re

import numpy as np
import pytest

from twinjax.trial import SpecError, Trial
from twinjax.trial._variability import (
    Dropout,
    MeasurementError,
    PlaceboResponse,
    Variability,
)

DURATION = 24.0


def _base(n=400, **variability):
    """A 1-compartment oral PK trial: placebo (C = 0 exactly) and one dose arm."""
    spec = {
        "trial": {"name": "var", "seed": 7, "duration": DURATION, "save_every": 2.0},
        "population": {
            "model": "pk1_oral",
            "n_per_arm": n,
            "demographics": False,
            "iiv": {"CL": 0.2},
        },
        "arms": [
            {"name": "placebo", "placebo": True},
            {"name": "10 mg", "doses": [{"amt": 10.0, "cmt": "depot", "ii": 6.0, "addl": 3}]},
        ],
        "endpoints": [
            {"name": "C_12", "kind": "value", "output": "C", "time": 12.0},
            {"name": "dC_24", "kind": "change", "output": "C", "time": 24.0},
            {"name": "Cmax", "kind": "cmax", "output": "C"},
        ],
        "statistics": {"replicates": 5},
    }
    if variability:
        spec["variability"] = variability
    return spec


def _run(spec):
    return Trial.from_dict(spec).run(progress=False)


def _arm(res, name):
    return res.table[res.table["arm"] == name]


def test_no_variability_keeps_the_deterministic_placebo_arm():
    t = _arm(_run(_base(n=20)), "placebo")
    assert (t["dC_24"] == 0).all() and "dropped" not in t


def test_measurement_error_gives_the_requested_sd_and_same_seed_same_table():
    sd = 1.5
    spec = _base(error=[{"output": "C", "sd": sd}])
    res = _run(spec)
    p = _arm(res, "placebo")
    n = len(p)
    # value: one measurement (SD sd); change: two independent ones (SD sd * sqrt(2))
    for col, want in (("C_12", sd), ("dC_24", sd * np.sqrt(2))):
        s = p[col].std(ddof=1)
        assert abs(s - want) < 4 * want / np.sqrt(2 * (n - 1)), (col, s, want)
        assert abs(p[col].mean()) < 4 * want / np.sqrt(n)
    # the ANCOVA baseline is the measured baseline the change was computed from
    assert np.allclose(p["dC_24"] + p["dC_24_baseline"], 0.0 + p["dC_24"] + p["dC_24_baseline"])
    summ = res.summary.set_index(["endpoint", "arm"])
    assert summ.loc[("dC_24", "placebo"), "sd"] > 0
    again = _run(copy.deepcopy(spec))
    assert again.table.equals(res.table)
    other = copy.deepcopy(spec)
    other["trial"]["seed"] = 8
    assert not _run(other).table["C_12"].equals(res.table["C_12"])


def test_proportional_error_scales_with_the_value():
    cv = 0.2
    res = _run(_base(n=300, error=[{"output": "C", "cv": cv}]))
    d = _arm(res, "10 mg")
    clean = _arm(_run(_base(n=300)), "10 mg")
    rel = d["C_12"].to_numpy() / clean["C_12"].to_numpy() - 1.0
    assert abs(rel.std(ddof=1) - cv) < 4 * cv / np.sqrt(2 * len(rel))
    assert (_arm(res, "placebo")["C_12"] == 0).all()  # 0 with a purely proportional error


def test_placebo_response_adds_the_time_course_in_every_arm():
    emax, t50, sd = -3.0, 6.0, 1.0
    spec = _base(placebo=[{"output": "C", "emax": emax, "t50": t50, "sd": sd}])
    res = _run(spec)
    clean = _run(_base())
    n = len(_arm(res, "placebo"))
    for arm in ("placebo", "10 mg"):
        a, c = _arm(res, arm), _arm(clean, arm)
        for col, t in (("C_12", 12.0), ("dC_24", 24.0)):
            eff = a[col].to_numpy() - c[col].to_numpy()
            frac = t / (t50 + t)
            assert abs(eff.mean() - emax * frac) < 4 * sd * frac / np.sqrt(n), (arm, col)
            assert abs(eff.std(ddof=1) - sd * frac) < 4 * sd * frac / np.sqrt(2 * n)


def test_disease_progression_slope():
    res = _run(_base(n=50, placebo=[{"output": "C", "slope": 0.1}]))
    assert np.allclose(_arm(res, "placebo")["dC_24"], 2.4)


@pytest.mark.parametrize("analysis", ["completers", "locf"])
def test_random_dropout_fraction_and_flags(analysis):
    hazard = 0.02  # per hour: 1 - exp(-0.48) = 38 % lost by 24 h
    res = _run(_base(n=600, dropout={"hazard": hazard, "analysis": analysis}))
    tab = res.table
    want = 1 - np.exp(-hazard * DURATION)
    n = len(tab)
    frac = tab["dropped"].mean()
    assert abs(frac - want) < 4 * np.sqrt(want * (1 - want) / n)
    assert len(tab) == 1200  # dropped patients stay in the table, flagged
    dt = tab.loc[tab["dropped"], "dropout_time"]
    assert dt.between(0, DURATION).all() and tab.loc[~tab["dropped"], "dropout_time"].isna().all()
    # exponential survival: mean dropout time given a dropout before the end
    tmean = 1 / hazard - DURATION * np.exp(-hazard * DURATION) / want
    assert abs(dt.mean() - tmean) < 4 * DURATION / np.sqrt(12 * len(dt))
    late = tab["dropped"] & (tab["dropout_time"] < 12.0)
    assert tab.loc[late, "Cmax"].isna().all()  # a window endpoint after the dropout
    if analysis == "completers":
        assert tab.loc[late, "C_12"].isna().all()
    else:  # carried forward from the last visit before the dropout (time 0 here)
        assert np.allclose(tab.loc[late, "C_12"], tab.loc[late, "dC_24_baseline"])
    early_ok = tab["dropped"] & (tab["dropout_time"] >= 12.0)
    assert tab.loc[early_ok, "C_12"].notna().all()
    drop = res.dropout.set_index("arm")
    assert drop["dropped"].sum() == tab["dropped"].sum()
    summ = res.summary.set_index(["endpoint", "arm"])
    if analysis == "completers":
        assert summ.loc[("C_12", "placebo"), "n"] == (~_arm(res, "placebo")["dropped"]).sum()
        assert (drop["analysed"] == drop["n"] - drop["dropped"]).all()
    else:  # LOCF: the last visit of C before the dropout (0 h or 12 h) is carried forward
        d = _arm(res, "10 mg")
        before = d["dropped"] & (d["dropout_time"] < 12.0)
        assert (d.loc[before, "dC_24"] == 0).all()
        mid = d["dropped"] & (d["dropout_time"] >= 12.0)
        assert mid.any()
        want = d.loc[mid, "C_12"] - d.loc[mid, "dC_24_baseline"]
        assert np.allclose(d.loc[mid, "dC_24"], want)
        assert summ.loc[("dC_24", "10 mg"), "n"] == len(d)
    js = res.to_json()
    assert js["dropout"][0]["analysis"] == analysis and "variability" in js


def test_outcome_dependent_dropout():
    # extra hazard while the concentration is above 0.05: only the dosed arm
    spec = _base(
        n=300,
        dropout={"outcome": {"output": "C", "hazard": 0.05, "threshold": 0.05}},
    )
    res = _run(spec)
    assert not _arm(res, "placebo")["dropped"].any()
    assert _arm(res, "10 mg")["dropped"].mean() > 0.3


def test_adherence_misses_doses():
    res = _run(_base(n=200, adherence=0.5))
    full = _run(_base(n=200))
    a, f = _arm(res, "10 mg"), _arm(full, "10 mg")
    ratio = a["C_12"].to_numpy() / f["C_12"].to_numpy()
    assert (ratio <= 1 + 1e-9).all() and ratio.mean() < 0.8 and (ratio > 0.999).any()
    assert _run(_base(n=200, adherence=1.0)).table.equals(full.table)


def test_python_api_matches_toml():
    spec = _base(n=30)
    var = Variability(
        errors=[MeasurementError("C", sd=0.5)],
        placebo=[PlaceboResponse("C", emax=-1.0, t50=4.0, sd=0.3)],
        dropout=Dropout(hazard=0.01, analysis="locf"),
        adherence=0.9,
    )
    t0 = Trial.from_dict(spec)
    t = Trial(
        t0.model,
        t0.population,
        t0.arms,
        t0.endpoints,
        duration=DURATION,
        save_every=2.0,
        n_per_arm=30,
        seed=7,
        name="var",
        replicates=5,
        variability=var,
    )
    toml = _base(
        n=30,
        error=[{"output": "C", "sd": 0.5}],
        placebo=[{"output": "C", "emax": -1.0, "t50": 4.0, "sd": 0.3}],
        dropout={"hazard": 0.01, "analysis": "locf"},
        adherence=0.9,
    )
    a = t.run(progress=False).table
    b = _run(toml).table
    assert a.equals(b)
    assert t.with_sample_size(10).variability is var


@pytest.mark.parametrize(
    "var,wheres",
    [
        ({"error": [{"output": "C", "sd": "1"}]}, [r"\[variability.error\]\[0\].sd"]),
        ({"error": [{"output": "C", "sd": -1.0, "cv": True}]}, [r"\]\[0\].sd", r"\]\[0\].cv"]),
        ({"error": [{"output": "C"}]}, ["needs sd > 0 or cv > 0"]),
        (
            {"error": [{"output": "C", "sd": 1.0}, {"output": "C", "cv": 0.1}]},
            ["one measurement error per output"],
        ),
        ({"error": [{"output": "Q", "sd": 1.0}]}, [r"\[variability.error\]\[0\].output"]),
        ({"error": [{"output": "C", "sd": 1.0, "mean": 2}]}, ["unknown key 'mean'"]),
        (
            {"placebo": [{"output": "C", "emax": "x", "t50": 0.0, "sd": -1, "slope_sd": -2}]},
            [
                r"\[variability.placebo\]\[0\].emax",
                r"\]\[0\].t50: must be > 0",
                r"\]\[0\].sd: must be >= 0",
                r"\]\[0\].slope_sd",
            ],
        ),
        ({"placebo": [{"output": "nope"}]}, [r"\[variability.placebo\]\[0\].output: unknown"]),
        (
            {"dropout": {"hazard": -0.1, "analysis": "itt"}},
            [r"\[variability.dropout\].hazard", r"\[variability.dropout\].analysis"],
        ),
        (
            {"dropout": {"outcome": {"output": "C", "hazard": -1, "direction": "up"}}},
            [
                r"\[variability.dropout\].outcome.hazard",
                r"outcome.direction",
                r"outcome: an outcome-dependent dropout needs a threshold",
            ],
        ),
        (
            {"dropout": {"outcome": {"output": "X", "threshold": 1.0, "change": "yes"}}},
            [r"outcome.change: expected a boolean"],
        ),
        (
            {"dropout": {"outcome": {"output": "X", "threshold": 1.0}}},
            [r"\[variability.dropout\].outcome.output: unknown output 'X'"],
        ),
        ({"dropout": {"rate": 0.1}}, [r"unknown key 'rate'"]),
        ({"adherence": 1.5}, [r"\[variability\].adherence: must be in \[0, 1\]"]),
        ({"adherence": "0.9"}, [r"\[variability\].adherence: expected a number"]),
        ({"noise": 1}, [r"unknown key 'noise' in \[variability\]"]),
    ],
)
def test_spec_validation(var, wheres, monkeypatch):
    import twinjax.trial._trial as tmod

    monkeypatch.setattr(tmod, "simulate_cohort", lambda *a, **k: 1 / 0)
    with pytest.raises(SpecError) as err:
        Trial.from_dict(_base(**var))
    for w in wheres:
        assert any(re.search(w, p) for p in err.value.problems), (w, err.value)


def test_all_problems_at_once():
    spec = _base(
        error=[{"output": "C", "sd": -1}],
        placebo=[{"output": "C", "t50": -2}],
        dropout={"hazard": "x"},
        adherence=2,
    )
    spec["trial"]["duration"] = -1
    with pytest.raises(SpecError) as err:
        Trial.from_dict(spec)
    probs = err.value.problems
    assert len(probs) >= 5, probs
    assert any("[trial].duration" in p for p in probs)


def test_python_api_checks():
    with pytest.raises(SpecError, match=r"MeasurementError\('C'\).sd"):
        MeasurementError("C", sd=-1.0)
    with pytest.raises(SpecError, match=r"PlaceboResponse\('C'\).t50"):
        PlaceboResponse("C", t50=0)
    with pytest.raises(SpecError, match=r"Dropout.analysis"):
        Dropout(analysis="itt")
    with pytest.raises(SpecError, match=r"variability.adherence"):
        Variability(adherence=-0.1)
    with pytest.raises(SpecError, match=r"variability.errors\[0\]"):
        Variability(errors=[1.0])
    t = Trial.from_dict(_base(n=4))
    with pytest.raises(SpecError, match="variability: expected a Variability"):
        Trial(t.model, t.population, t.arms, t.endpoints, duration=DURATION, variability={"a": 1})


AH = pathlib.Path(__file__).resolve().parent.parent / "examples" / "antihypertensive_trial.toml"


def test_antihypertensive_example_declares_variability():
    v = Trial.from_toml(AH).variability
    assert v is not None and {e.output for e in v.errors} >= {"circ.MAP", "circ.SBP"}
    assert {p.output for p in v.placebo} >= {"circ.MAP"} and v.dropout is not None
    assert 0 < v.adherence < 1
    assert [o.param for o in v.iov] == ["pk.CL"]  # inter-occasion variability (tests/test_iov.py)


@pytest.mark.slow
def test_antihypertensive_example_placebo_change_varies():
    import tomllib

    spec = tomllib.loads(AH.read_text())
    spec["statistics"].update(replicates=5, power_sizes=[3])
    res = Trial.from_dict(spec).with_sample_size(12).run(progress=False)
    p = _arm(res, "placebo")
    assert p["MAP_change_trough"].std() > 2.0  # SD 5·√2 ≈ 7 mmHg plus the placebo response
    assert "dropped" in res.table
