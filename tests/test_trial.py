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
    assert r["p_fisher"] == pytest.approx(sps.fisher_exact([[15, 35], [5, 45]]).pvalue)


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


def _cli(*args):
    """The command line in this process (typer's test runner): the same app as the
    ``twinjax`` script and ``python -m twinjax``, without starting a Python and
    importing JAX for each call."""
    from typer.testing import CliRunner

    from twinjax.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_version_models_and_bad_spec(tmp_path):
    # the two module entry points, as separate processes
    for module in ("twinjax.cli", "twinjax"):
        r = subprocess.run(
            [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0 and r.stdout.startswith("twinjax "), (module, r.stderr)
    assert _cli("--version").stdout.startswith("twinjax ")
    assert "pkpd_idr3" in _cli("models").stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace('kind = "cmax"', 'kind = "cmaxx"'))
    r = _cli("trial", bad, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "cmaxx" in r.stdout
    # the message names the table (rich must not take "[population]" for markup)
    bad.write_text(EXAMPLE.read_text().replace("[population]", "[population]\nfoo = 1", 1))
    r = _cli("trial", bad, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "unknown key 'foo' in [population]" in r.stdout, r.stdout
    r = _cli("simulate", "pk1_oral", "--dose", "100:depot", "--duration", "12", "--out",
             tmp_path / "s")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s" / "simulation.png").exists()
    for args, msg in [
        (("--param", "CL"), "--param 'CL': expected NAME=VALUE"),
        (("--param", "CL=abc"), "--param 'CL=abc': expected NAME=VALUE"),
        (("--dose", "abc:depot"), "--dose 'abc:depot': AMT, TIME and II must be numbers"),
    ]:
        r = _cli("simulate", "pk1_oral", *args, "--out", tmp_path / "bad")
        assert r.exit_code == 2 and msg in " ".join(r.stdout.split()), r.stdout
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------
# organ-model trials (examples/*.toml), sample-size override, fast steady states
# ---------------------------------------------------------------------------------
AH = ROOT / "examples" / "antihypertensive_trial.toml"
GLUCOSE = ROOT / "examples" / "glucose_trial.toml"
PBPK = ROOT / "examples" / "pbpk_child_pugh_trial.toml"


def _quick(path, n, **trial):
    spec = tomllib.loads(path.read_text())
    spec["statistics"]["replicates"] = 20
    spec["statistics"]["power_sizes"] = [3, 6]
    spec["trial"].update(trial)
    return Trial.from_dict(spec).with_sample_size(n)


def test_with_sample_size_overrides_every_arm():
    t = Trial.from_dict(_spec()).with_sample_size(7)
    assert t.n_per_arm == 7 and all(a.n is None for a in t.arms) and t.n_patients == 21
    with pytest.raises(SpecError, match="at least 2"):
        t.with_sample_size(1)


def test_pbpk_child_pugh_example(tmp_path):
    t = _quick(PBPK, 12, save_every=1.0)
    res = t.run(out=tmp_path, progress=False)
    assert (res.table["status"] == 0).all()
    m = res.summary.set_index(["endpoint", "arm"])["mean"]
    # Child-Pugh C raises exposure at the same dose; the reduced dose brings it back
    assert m[("AUC_0_48", "Child-Pugh C 100 mg")] > 1.2 * m[("AUC_0_48", "healthy 100 mg")]
    ratio = m[("AUC_0_48", "Child-Pugh C 70 mg")] / m[("AUC_0_48", "Child-Pugh C 100 mg")]
    assert 0.5 < ratio < 0.95  # 0.7 in the typical patient (arms are different patients)
    assert res.write(tmp_path).exists()


def test_glucose_example(tmp_path):
    t = _quick(GLUCOSE, 10, save_every=10.0)
    res = t.run(out=tmp_path, progress=False)
    assert (res.table["status"] == 0).all()
    m = res.summary.set_index(["endpoint", "arm"])
    tir = m["mean"].xs("TIR_70_180")
    assert 0.0 < tir["standard bolus"] < tir["bolus +30 %"] <= 1.0
    hypo = m["rate"].xs("hypoglycaemia_70")
    assert hypo["bolus x2"] >= hypo["standard bolus"]
    assert res.write(tmp_path).exists()


def test_arm_params_are_validated():
    spec = tomllib.loads(PBPK.read_text())
    spec["arms"][1]["params"]["f_kidney"] = 0.5
    with pytest.raises(SpecError, match="unknown key 'f_kidney' in \\[arms\\[1\\].params\\]"):
        Trial.from_dict(spec)
    spec = tomllib.loads(PBPK.read_text())
    spec["arms"][1]["params"]["f_liver"] = -1.0
    with pytest.raises(SpecError, match="f_liver"):
        Trial.from_dict(spec)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda s: s["trial"].update(beats=3), r"unknown key 'beats' in \[trial\]"),
        (lambda s: s["arms"][1]["doses"][0].update(amt=-5.0), "amt = -5.0 is negative"),
        (lambda s: s["arms"][2].pop("doses"), r"arm '20 mg qd' has no regimen"),
        (lambda s: s["endpoints"][0].update(output="circ.QQ"), r"unknown output 'circ.QQ'"),
        (
            lambda s: s["population"]["iiv"].update({"circ.R_XX": 0.1}),
            r"unknown key 'circ.R_XX' in \[population.iiv\]",
        ),
        (lambda s: s["trial"].update(beat_times=[0.0, 400.0]), "beat_times: 400.0 is outside"),
        (lambda s: s["endpoints"][4].update(window=[10.0, 20.0]), "no beat time in its window"),
    ],
)
def test_antihypertensive_spec_errors_before_simulation(mutate, match, monkeypatch):
    from twinjax.models import _multiscale

    def boom(*a, **k):
        raise AssertionError("simulated despite a malformed spec")

    monkeypatch.setattr(_multiscale, "steady_state_cohort", boom)
    spec = tomllib.loads(AH.read_text())
    mutate(spec)
    with pytest.raises(SpecError, match=match):
        Trial.from_dict(spec).run(progress=False)


def test_beat_times_need_a_per_beat_model():
    spec = _spec()
    spec["trial"]["beat_times"] = [0.0]
    with pytest.raises(SpecError, match="beat_times is only for models with per-beat outputs"):
        Trial.from_dict(spec)


def test_anderson_steady_states_match_plain_beat_iteration():
    import jax
    import jax.numpy as jnp

    import twinjax as tj
    from twinjax.models._multiscale import steady_state_cohort
    from twinjax.models.circulation import Circulation, to_periodic_steady_state

    m = Circulation()
    names = ("HR", "R_AR_SYS", "C_AR_SYS", "EA_LV", "C_VEN_SYS")
    z = jax.random.normal(jax.random.key(3), (len(names), 4))
    p = {k: m.param(k).value * jnp.exp(0.15 * z[i]) for i, k in enumerate(names)}
    warm = to_periodic_steady_state(m, None, tj.solvers.Diffrax(rtol=1e-8, atol=1e-8), tol=1e-8)
    # fast settings (the trial's): rk4 with 400 steps per beat, tol 1e-4, warm start
    fast = steady_state_cohort(m, p, warm.state)
    ref = to_periodic_steady_state(
        m, p, tj.solvers.Diffrax(rtol=1e-9, atol=1e-9), tol=1e-9, max_beats=2000, n_save=401
    )
    assert bool(np.all(np.asarray(ref.converged))) and bool(np.all(fast["converged"]))
    assert int(np.max(fast["beats"])) < 15 < int(np.min(ref.beats))
    for k, atol in (("MAP", 0.05), ("SBP", 0.1), ("DBP", 0.15), ("CO", 0.01)):
        np.testing.assert_allclose(fast["metrics"][k], ref.metrics[k], atol=atol, err_msg=k)


@pytest.mark.slow
def test_antihypertensive_example(tmp_path):
    """The twins' pharmacology without the trial's variability (measurement error,
    placebo response, dropout, adherence: tests/test_variability.py)."""
    spec = tomllib.loads(AH.read_text())
    assert "variability" in spec  # the shipped demo measures with error
    spec.pop("variability")
    spec["statistics"]["replicates"] = 20
    spec["statistics"]["power_sizes"] = [3, 6]
    t = Trial.from_dict(spec).with_sample_size(6)
    res = t.run(out=tmp_path, progress=False)
    assert (res.table["status"] == 0).all()
    m = res.summary.set_index(["endpoint", "arm"])["mean"]
    assert m[("MAP_change_peak", "placebo")] == 0.0  # no drug, the same steady state
    assert (
        m[("MAP_change_peak", "20 mg qd")]
        < m[("MAP_change_peak", "5 mg qd")]
        < m[("MAP_change_trough", "5 mg qd")]
        < 0.0
    )
    html = res.write(tmp_path).read_text()
    assert "MAP_change_peak" in html and "data:image/png;base64," in html


def test_cli_sample_size_override(tmp_path):
    r = _cli("trial", PBPK, "--n", "3", "--no-progress", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert "9 virtual patients" in r.stdout and "report.html" in r.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["n_patients"] == 9


def test_report_renders_in_headless_browser(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    import render_report

    if render_report.find_browser() is None:
        pytest.skip("no headless browser (chromium/chrome) on PATH; `apt-get install chromium`")
    # the patients of test_small_trial_runs_and_writes_report: its compiled programs
    res = Trial.from_dict(_small(_spec())).run(progress=False)
    report = res.write(tmp_path)
    info = render_report.render(report, tmp_path / "report.png")
    assert info["width"] == 1200 and info["height"] > 1500
    # matplotlib's coloured lines, bands and bars are on the page (text is black/grey)
    assert info["colour_fraction"] > 1e-3 and info["coloured_rows"] > 200


_SHARDED_SS = """
import sys, jax, numpy as np
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from twinjax.models._multiscale import steady_state_cohort
from twinjax.models.circulation import Circulation
m = Circulation()
z = jax.random.normal(jax.random.key(5), (2, 4))
p = {"R_AR_SYS": m.param("R_AR_SYS").value * jnp.exp(0.15 * z[0]),
     "EA_LV": m.param("EA_LV").value * jnp.exp(0.15 * z[1])}
out = steady_state_cohort(m, p, max_beats=8)
np.savez(sys.argv[1], MAP=np.asarray(out["metrics"]["MAP"]), beats=np.asarray(out["beats"]),
         n=len(jax.devices()))
"""


@pytest.mark.slow
def test_steady_states_sharded_over_devices_equal_one_device(tmp_path):
    """Each device iterates its own patients (shard_map): bitwise the same results."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ss.py"
    script.write_text(_SHARDED_SS)
    outs = {}
    for n_dev in (1, 2):
        # the test process's XLA flags (tools/run_tests.py's code generation) and the
        # device count
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n_dev}"
        env = dict(os.environ, XLA_FLAGS=flags.strip())
        path = tmp_path / f"ss{n_dev}.npz"
        subprocess.run([sys.executable, str(script), str(path)], env=env, check=True, timeout=900)
        outs[n_dev] = np.load(path)
    assert int(outs[2]["n"]) == 2 and int(outs[1]["n"]) == 1
    np.testing.assert_array_equal(outs[2]["MAP"], outs[1]["MAP"])
    np.testing.assert_array_equal(outs[2]["beats"], outs[1]["beats"])
