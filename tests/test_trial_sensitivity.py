"""Sensitivity analysis asked for in the trial specification (issue #18 item 3): the
``[sensitivity]`` table, the report's Sensitivity section (tornado and Sobol' figures
with their tables), the numbers in summary.json, and the CLI's warnings.

One small PK/PD trial (the example's model, 2 arms of 6 patients, 4-h grid) is simulated
once for the module, with local sensitivities of the day-7 AUC to three parameters over
4 patients of the active arm and Sobol' indices over two parameter ranges (N = 16 base
samples, 64 runs). The numbers must equal direct ``twinjax.sensitivity`` calls on the
same inputs (the same patients, regimen, save grid and solver).
"""

import base64
import json
import pathlib
import re
import tomllib

import numpy as np
import pytest

import twinjax as tj
from twinjax.trial import Sensitivity, SpecError, Trial

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "pkpd_trial.toml"
N = 6
ARM = "15 mg q12h"
LOCAL_PARAMS = ["pk.CL", "pk.V", "pk.KA"]
BOUNDS = {"pk.CL": [3.0, 8.0], "pk.KA": [0.5, 2.0]}
SENSITIVITY = {
    "endpoint": "AUC_day7",
    "arm": ARM,
    "parameters": LOCAL_PARAMS,
    "patients": 4,
    "sobol": {"parameters": BOUNDS, "n": 16, "seed": 7, "n_bootstrap": 200},
}
# percent change of a concentration that is 0 at baseline: missing for every patient,
# so its power-curve size is skipped with a warning (for the CLI test)
NAN_ENDPOINT = {
    "name": "C_pct_change",
    "kind": "change",
    "output": "pk.C",
    "time": 168.0,
    "percent": True,
}


def _spec(sensitivity=None):
    spec = tomllib.loads(EXAMPLE.read_text())
    spec["trial"]["save_every"] = 4.0
    spec["arms"] = [a for a in spec["arms"] if a["name"] in ("placebo", ARM)]
    spec["statistics"].update(replicates=5, power_sizes=[3], subgroups=[])
    spec["endpoints"].append(dict(NAN_ENDPOINT))
    spec["sensitivity"] = dict(SENSITIVITY if sensitivity is None else sensitivity)
    return spec


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    t = Trial.from_dict(_spec()).with_sample_size(N)
    res = t.run(progress=False)
    out = tmp_path_factory.mktemp("sens")
    text = res.write(out).read_text()
    summary = json.loads((out / "summary.json").read_text())
    return t, res, text, summary


def _section(text):
    start = text.index("id='sensitivity'")
    return text[start : text.index("<h2", start)]


def test_report_has_the_sensitivity_section_with_both_figures(run):
    t, res, text, _ = run
    assert t.sensitivity.arm == ARM and res.sensitivity["notes"] == []
    assert "<a href='#sensitivity'>Sensitivity</a>" in text
    design = text[text.index("id='design'") : text.index("id='patients'")]
    assert (
        "Sensitivity analysis:</b> local sensitivities and Sobol&#x27; indices over pk.CL, "
        "pk.KA of AUC_day7 in 15 mg q12h"
    ) in design
    sec = _section(text)
    for fig in ("tornado", "sobol"):
        start = sec.index(f"<figure class='{fig}'")
        src = sec[start:].split("src='data:image/png;base64,", 1)[1].split("'", 1)[0]
        assert base64.b64decode(src)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "id='sensitivity-local'" in sec and "id='sensitivity-sobol'" in sec
    assert "4 patients of 15 mg q12h" in sec
    assert "N = 16 base samples, 64 runs" in sec
    # a table row per parameter, none with nan
    for p in LOCAL_PARAMS + list(BOUNDS):
        assert f"<td>{p}</td>" in sec
    cells = re.findall(r"<td>([^<]*)</td>", sec)
    assert len(cells) >= 6 * 2 + 4 * 3 and not any("nan" in c.lower() for c in cells)
    # no sensitivity table: no section, no link
    spec = _spec()
    del spec["sensitivity"]
    t2 = Trial.from_dict(spec).with_sample_size(N)
    assert t2.sensitivity is None


def test_local_numbers_equal_a_direct_call(run):
    t, res, _, summary = run
    loc = res.sensitivity["local"]
    cohort = t.arm_cohort(ARM)
    params = {k: np.asarray(v)[:4] for k, v in cohort.params.items()}
    arm = next(a for a in t.arms if a.name == ARM)
    ep = next(e for e in t.endpoints if e.name == "AUC_day7")
    direct = tj.sensitivity.local(
        t.model, params, arm.regimen, t.times, endpoint=ep, parameters=LOCAL_PARAMS,
        solver=t.solver,
    )  # fmt: skip
    assert loc.parameters == tuple(LOCAL_PARAMS) and loc.n_patients == 4
    np.testing.assert_allclose(loc.values, direct.values, rtol=0, atol=0)
    np.testing.assert_allclose(loc.normalised, direct.normalised, rtol=1e-12)
    np.testing.assert_allclose(loc.y, direct.y, rtol=1e-12)
    # the trial's AUC of the same patients (no measurement error on AUC_day7's output
    # in this spec) is the quantity differentiated
    tab = res.table[res.table["arm"] == ARM]
    np.testing.assert_allclose(tab["AUC_day7"].to_numpy()[:4], loc.y, rtol=1e-9)
    # summary.json: median and quartiles over the patients, per parameter
    js = {r["parameter"]: r for r in summary["sensitivity"]["local"]["summary"]}
    assert set(js) == set(LOCAL_PARAMS)
    for j, p in enumerate(LOCAL_PARAMS):
        q = np.percentile(direct.normalised[:, j], [5, 25, 50, 75, 95])
        got = [js[p][k] for k in ("q05", "q25", "median", "q75", "q95")]
        np.testing.assert_allclose(got, q, rtol=1e-12)
    # exposure falls with clearance and CL drives it most (near steady state the AUC over
    # a dosing interval is F dose / CL; here a 4-h trapezoid, not yet at steady state)
    assert list(js)[0] == "pk.CL" and js["pk.CL"]["median"] < -0.5


def test_sobol_numbers_equal_a_direct_call(run):
    t, res, _, summary = run
    sob = res.sensitivity["sobol"]
    arm = next(a for a in t.arms if a.name == ARM)
    ep = next(e for e in t.endpoints if e.name == "AUC_day7")
    fixed = {k: v for k, v in t.population.typical.items() if k not in BOUNDS}
    direct = tj.sensitivity.sobol(
        t.model,
        {k: tuple(v) for k, v in BOUNDS.items()},
        params=fixed,
        regimen=arm.regimen,
        times=t.times,
        endpoint=ep,
        n=16,
        seed=7,
        n_bootstrap=200,
        solver=t.solver,
    )
    assert sob.samples.shape == (64, 2) and sob.seed == 7
    np.testing.assert_array_equal(sob.samples, direct.samples)
    for k in ("S1", "ST", "S1_ci", "ST_ci", "S1_conf", "ST_conf"):
        np.testing.assert_allclose(getattr(sob, k), getattr(direct, k), rtol=1e-12, atol=1e-15)
    js = summary["sensitivity"]["sobol"]
    assert js["n"] == 16 and js["runs"] == 64 and js["seed"] == 7
    assert js["fixed"]["pk.V"] == t.population.typical["pk.V"] == 50.0
    rows = {r["parameter"]: r for r in js["indices"]}
    for j, p in enumerate(BOUNDS):
        assert [rows[p]["lower"], rows[p]["upper"]] == BOUNDS[p]
        np.testing.assert_allclose(
            [rows[p]["S1"], rows[p]["ST"], rows[p]["ST_low"], rows[p]["ST_high"]],
            [direct.S1[j], direct.ST[j], direct.ST_ci[j, 0], direct.ST_ci[j, 1]],
            rtol=1e-12,
        )
    # the AUC = F dose / CL does not depend on KA: CL carries the variance
    assert direct.ST[0] > 0.9 and direct.ST[1] < 0.05


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"endpoint": "nope"}, "[sensitivity].endpoint: unknown endpoint 'nope'; the trial's"),
        ({"arm": "10 mg"}, "[sensitivity].arm: unknown arm '10 mg'; the arms are"),
        ({"bogus": 1}, "unknown key 'bogus' in [sensitivity]; allowed keys: ['arm', 'endpoint'"),
        (
            {"parameters": ["pk.CL", "CLx"]},
            "[sensitivity].parameters: unknown parameter(s) ['CLx']",
        ),
        ({"patients": 0}, "[sensitivity].patients: must be >= 1, got 0"),
        ({"local": "true"}, "[sensitivity].local: expected a boolean (true/false)"),
        (
            {"endpoint": "responder_20pct"},
            "endpoint 'responder_20pct' of kind 'responder' is piecewise constant",
        ),
        ({"local": False, "sobol": None}, "[sensitivity]: asks for nothing"),
        ({"sobol": {"parameters": BOUNDS, "n": 100}}, "[sensitivity.sobol].n: base samples must"),
        ({"sobol": {"parameters": BOUNDS, "N": 16}}, "unknown key 'N' in [sensitivity.sobol]"),
        ({"sobol": {"n": 16}}, "[sensitivity.sobol]: needs parameters = {NAME = [lower, upper]"),
        (
            {"sobol": {"parameters": {"pk.CL": [8.0, 3.0]}}},
            "[sensitivity.sobol].parameters.pk.CL: lower must be < upper, got [8, 3]",
        ),
        (
            {"sobol": {"parameters": {"pk.CL": [-1.0, 3.0]}}},
            "[sensitivity.sobol].parameters: bounds['pk.CL']: -1.0",
        ),
        (
            {"sobol": {"parameters": {"pk.CLx": [1.0, 3.0]}}},
            "[sensitivity.sobol].parameters: unknown parameter(s) ['pk.CLx']",
        ),
        ({"sobol": {"parameters": {"pk.CL": 3.0}}}, "expected [lower, upper], got the number"),
    ],
)
def test_bad_sensitivity_tables_are_refused_before_simulation(change, expected, monkeypatch):
    import twinjax.trial._trial as trial_mod

    def no_simulation(*a, **k):
        raise AssertionError("simulated")

    monkeypatch.setattr(trial_mod, "simulate_cohort", no_simulation)
    sens = {k: v for k, v in {**SENSITIVITY, **change}.items() if v is not None}
    with pytest.raises(SpecError) as err:
        Trial.from_dict(_spec(sens))
    assert expected in str(err.value), str(err.value)


def test_python_api_names_the_argument():
    with pytest.raises(SpecError, match=r"sensitivity\.sobol_n: base samples must be a power"):
        Sensitivity("AUC_day7", sobol={"pk.CL": (3.0, 8.0)}, sobol_n=10)
    with pytest.raises(SpecError, match=r"sensitivity\.parameters: parameters must be unique"):
        Sensitivity("AUC_day7", parameters=["pk.CL", "pk.CL"])
    t = Trial.from_dict(_spec())
    with pytest.raises(SpecError, match=r"sensitivity\.endpoint: unknown endpoint 'x'"):
        Trial(
            t.model,
            t.population,
            t.arms,
            t.endpoints,
            duration=t.duration,
            save_every=t.save_every,
            sensitivity=Sensitivity("x"),
        )


def test_cli_prints_the_reports_warnings(run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from twinjax.cli import app

    t, res, _, _ = run
    assert res.power_skipped["endpoint"].tolist() == ["C_pct_change"]
    monkeypatch.setattr(Trial, "from_toml", classmethod(lambda cls, path: t))
    monkeypatch.setattr(Trial, "run", lambda self, **kw: res)
    spec = tmp_path / "spec.toml"
    spec.write_text("# replaced by the patched Trial.from_toml\n")
    r = CliRunner().invoke(app, ["trial", str(spec), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    for w in res.warnings:
        assert " ".join(w.split()) in text, (w, r.output)
    assert "sensitivity analysis of AUC_day7" in text
