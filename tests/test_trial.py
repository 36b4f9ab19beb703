"""Virtual trials: specs, endpoints, statistics against SciPy, power, report, CLI."""

import base64
import json
import pathlib
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from scipy import stats as sps

from twinjax.trial import Endpoint, SpecError, Trial, _stats

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "pkpd_trial.toml"


def _spec():
    return tomllib.loads(EXAMPLE.read_text())


def _small(spec, n=40):
    spec["population"]["n_per_arm"] = n
    spec["trial"]["save_every"] = 4.0
    spec["statistics"]["replicates"] = 20
    spec["statistics"]["power_sizes"] = [3, 6]
    return spec


def test_welch_matches_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, 37), rng.normal(0.5, 2, 51)
    r = _stats.welch(x, y)
    ref = sps.ttest_ind(y, x, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert r["statistic"] == pytest.approx(ref.statistic, rel=1e-10)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_risk_difference_matches_scipy_fisher():
    x = np.array([1] * 5 + [0] * 45, bool)
    y = np.array([1] * 15 + [0] * 35, bool)
    r = _stats.risk_difference(x, y)
    assert r["diff"] == pytest.approx(0.2)
    assert r["p_value"] == pytest.approx(sps.fisher_exact([[15, 35], [5, 45]]).pvalue)


def test_power_curve_matches_analytic_power():
    rng = np.random.default_rng(1)
    delta, sd = 0.8, 1.0
    x = rng.normal(0.0, sd, 20000)
    y = rng.normal(delta, sd, 20000)
    pc = _stats.power_curve(x, y, [5, 10, 20], 800, False, 0.05, np.random.default_rng(2))
    for row in pc.itertuples():
        want = _stats.analytic_power(delta, sd, row.n_per_arm)
        assert abs(row.power - want) < 4 * row.mc_se + 0.01, (row.n_per_arm, row.power, want)


def test_endpoints_on_known_trajectories():
    t = np.linspace(0.0, 10.0, 11)
    y = np.stack([t, 10 - t])  # (2, 11)
    out = {"y": y}
    assert np.allclose(Endpoint("v", "value", "y", time=2.5).compute(t, out), [2.5, 7.5])
    assert np.allclose(Endpoint("c", "change", "y", time=10.0).compute(t, out), [10.0, -10.0])
    assert np.allclose(Endpoint("a", "auc", "y").compute(t, out), [50.0, 50.0])
    assert np.allclose(Endpoint("m", "cmax", "y").compute(t, out), [10.0, 10.0])
    assert np.allclose(Endpoint("tm", "tmax", "y").compute(t, out), [10.0, 0.0])
    assert np.allclose(
        Endpoint("r", "time_in_range", "y", low=0, high=4).compute(t, out), [5 / 11, 5 / 11]
    )
    s = Endpoint("s", "safety", "y", threshold=1.0, direction="below").compute(t, out)
    assert s.tolist() == [True, True]
    s = Endpoint("s", "safety", "y", threshold=1.0, direction="below", window=(2.0, 8.0)).compute(
        t, out
    )
    assert s.tolist() == [False, False]


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda s: s["trial"].update(speed=3), r"unknown key 'speed' in \[trial\]"),
        (lambda s: s["arms"][1]["doses"][0].update(amt=-5.0), "amt = -5.0 is negative"),
        (lambda s: s["arms"][1].pop("doses"), r"arm '3 mg q12h' has no regimen"),
        (lambda s: s["endpoints"][0].update(output="pd.Q"), r"unknown output 'pd.Q'"),
        (lambda s: s["population"].update(model="heart9"), "unknown model 'heart9'"),
        (lambda s: s["arms"][1]["doses"][0].update(cmt="gut"), "unknown compartment 'gut'"),
        (lambda s: s["endpoints"][0].update(kind="median"), "kind 'median' unknown"),
    ],
)
def test_malformed_spec_fails_before_simulation(mutate, match, monkeypatch):
    import twinjax.trial._trial as tmod

    def boom(*a, **k):
        raise AssertionError("simulated despite a malformed spec")

    monkeypatch.setattr(tmod, "simulate_cohort", boom)
    spec = _spec()
    mutate(spec)
    with pytest.raises((SpecError, ValueError), match=match):
        Trial.from_dict(spec).run(progress=False)


def test_small_trial_runs_and_writes_report(tmp_path):
    t = Trial.from_dict(_small(_spec()))
    res = t.run(out=tmp_path, progress=False)
    assert len(res.table) == 120 and (res.table["status"] == 0).all()
    assert (res.table["AGE"].between(18, 75)).all()  # inclusion criterion
    comp = res.comparisons.set_index(["endpoint", "arm"])
    # dose-dependent effect on the biomarker
    assert (
        0
        < comp.loc[("change_R_day7", "3 mg q12h"), "diff"]
        < comp.loc[("change_R_day7", "15 mg q12h"), "diff"]
    )
    report = res.write(tmp_path)
    html = report.read_text()
    imgs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(imgs) >= 3
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_patients"] == 120
    assert (tmp_path / "endpoints.csv").exists()
    assert (tmp_path / "results.zarr" / "placebo" / "manifest.json").exists()
    # same seed, same trial
    res2 = t.run(progress=False)
    np.testing.assert_array_equal(res.table["AUC_day7"], res2.table["AUC_day7"])


def test_cli_version_models_and_bad_spec(tmp_path):
    run = lambda *a: subprocess.run(
        [sys.executable, "-m", "twinjax.cli", *a],  # noqa: E731
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run("--version").stdout.startswith("twinjax ")
    assert "pkpd_idr3" in run("models").stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace('kind = "cmax"', 'kind = "cmaxx"'))
    r = run("trial", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "cmaxx" in r.stdout
    r = run(
        "simulate",
        "pk1_oral",
        "--dose",
        "100:depot",
        "--duration",
        "12",
        "--out",
        str(tmp_path / "s"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "s" / "simulation.png").exists()


@pytest.mark.slow
def test_notebook_01_executes():
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    path = ROOT / "notebooks" / "01_virtual_trial.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outs if o.get("output_type") == "error"]
