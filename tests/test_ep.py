"""Cardiac electrophysiology: Rush-Larsen accuracy, biomarkers, drug block, ORd validation."""

import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import ep
from twinjax.models.ep import cell_population, drugs
from twinjax.models.ep._solver import _pace

LR = ep.LuoRudy1991()
EXAMPLE_SAFETY = pathlib.Path(__file__).parents[1] / "examples" / "cardiac_safety.toml"


# ---- numerics -----------------------------------------------------------------------------
def _tight_lr_beat():
    """One LR1991 beat, dense, from diffrax Kvaerno5 at rtol = atol = 1e-10."""
    ts = jnp.linspace(0.0, 999.99, 100_000)
    r = tj.simulate(LR, {}, None, ts, solver=tj.solvers.Diffrax(rtol=1e-10, atol=1e-10, dtmax=0.25))
    assert int(r.status) == 0
    return ep.from_trace(np.asarray(ts), np.asarray(r.outputs["V"]))


def test_rush_larsen_meets_tight_reference_and_converges():
    ref = _tight_lr_beat()
    errs = []
    for s in (1.0, 0.5, 0.25):
        # the step settings as arrays: values of one compiled program (Python floats are
        # static fields of the solver, one compilation per setting)
        # every step limit scaled by s (the error controller's tolerance by s^2: its
        # estimate is of order dt^2); s = 1: the defaults
        sol = ep.RushLarsen(
            dt_max=jnp.asarray(5.0 * s),
            dv_max=jnp.asarray(0.5 * s),
            dt_min=jnp.asarray(0.005),
            rtol=jnp.asarray(1e-3 * s * s),
        )
        b = {k: float(v[0]) for k, v in ep.pace(LR, {}, 1, solver=sol).biomarkers.items()}
        errs.append(abs(b["APD90"] - ref["APD90"]))
        if s == 1.0:  # the default settings
            assert b["APD90"] == pytest.approx(ref["APD90"], rel=1e-3)
            assert b["APD50"] == pytest.approx(ref["APD50"], rel=1e-3)
            assert b["V_peak"] == pytest.approx(ref["V_peak"], abs=0.5)
            assert b["dVdt_max"] == pytest.approx(ref["dVdt_max"], rel=0.02)
    # second order: halving the steps shrinks the error (allow for the event noise)
    assert errs[-1] < 0.5 * errs[0] + 1e-3


def test_on_the_fly_biomarkers_equal_dense_trace():
    sol = ep.RushLarsen(dt_max=0.1, dv_max=0.1)
    res = ep.pace(LR, {}, 2, save_every=0.1, solver=sol)
    V = np.asarray(res.trace["V"][-1])
    dense = ep.from_trace(np.asarray(res.times), V)
    fly = {k: float(v[-1]) for k, v in res.biomarkers.items()}
    for k in ("APD90", "APD50", "APD30"):
        assert fly[k] == pytest.approx(dense[k], abs=0.5)  # trace sampled every 0.1 ms
    assert not fly["EAD"] and not fly["RF"]
    assert fly["triangulation"] == pytest.approx(fly["APD90"] - fly["APD30"])


def test_batch_equals_single_and_float32():
    gk = jnp.array([0.2, 0.282, 0.35])
    rb = ep.pace(LR, {"gK": gk}, 2, record="last")
    for i in range(3):
        ri = ep.pace(LR, {"gK": float(gk[i])}, 2, record="last")
        assert float(ri.last()["APD90"]) == pytest.approx(float(rb.last()["APD90"][i]), rel=1e-10)
    apd = np.asarray(rb.last()["APD90"])
    assert np.all(np.diff(apd) < 0), "more IK, shorter action potential"
    r32 = ep.pace(LR, {"gK": gk}, 2, record="last", dtype=jnp.float32)
    assert r32.last()["APD90"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(r32.last()["APD90"]), apd, rtol=2e-3)


def test_qnet_and_rhs_consistency():
    p, _ = LR.complete({})
    y = LR.init(p)
    gates, d, cur = LR.evaluate(0.0, y, p)
    rhs = LR.rhs(0.0, y, p, {})
    assert float(rhs["V"]) == pytest.approx(-float(cur["Iion"] + cur["Istim"]))
    inf, tau = gates["m"]
    assert float(rhs["m"]) == pytest.approx(float((inf - y["m"]) / tau))
    obs = LR.observe(0.0, y, p)
    assert float(obs["qnet_current"]) == pytest.approx(float(cur["ICaL"] + cur["IK"] + cur["IK1"]))


def test_pace_validates_inputs():
    with pytest.raises(ValueError, match="gK.*bounds"):
        ep.pace(LR, {"gK": -1.0}, 1)
    with pytest.raises(ValueError, match="record"):
        ep.pace(LR, {}, 1, record="some")
    with pytest.raises(ValueError, match="save_every"):
        ep.pace(LR, {}, 1, save_every=0.01)


# ---- drug block ---------------------------------------------------------------------------
def test_hill_block_and_compound_table():
    assert float(drugs.hill_block(10.0, 10.0, 1.0)) == pytest.approx(0.5)
    assert float(drugs.hill_block(5.0, jnp.nan, 1.0)) == 1.0
    tab = drugs.compounds()
    assert len(tab) == 12 and {"dofetilide", "verapamil", "quinidine"} <= set(tab.index)
    assert set(tab["risk"]) == {0, 1, 2}
    f = drugs.block_factors("dofetilide", 4.9)
    assert float(f["IKr"]) == pytest.approx(0.5)
    assert float(f["IKs"]) == 1.0  # no IKs block measured
    m = ep.ORd()
    p = drugs.apply_block(m, {}, {"IKr": 0.25, "ICaL": 0.5})
    assert float(p["GKr"]) == pytest.approx(0.25 * 0.046)
    assert float(p["PCa"]) == pytest.approx(0.5e-4)
    with pytest.raises(KeyError, match="known"):
        drugs.block_factors("aspirin", 1.0)


def test_lr_dose_dependent_apd_prolongation_under_ik_block():
    frac = jnp.array([1.0, 0.7, 0.4])
    p = drugs.apply_block(LR, {}, {"IKr": frac})
    apd = np.asarray(ep.pace(LR, p, 3, record="last").last()["APD90"])
    assert np.all(np.diff(apd) > 5.0)


# ---- ORd ----------------------------------------------------------------------------------
# Control APD90 at 1 Hz (CL 1000 ms, -80 A/F x 0.5 ms), steady state, per cell type.
#
# Published (paper): endo ~271 ms, O'Hara et al. 2011 PLoS Comput Biol 7:e1002061 (model APD90
# at CL 1000 ms on the steady-state rate-dependence curve, read from a figure; the value quoted
# in issue #6). For epi and M no control APD90 at 1 Hz stated as a number was found (paper text
# and captions searched, later papers searched), so the per-cell-type reference is:
#
# Reference implementation, per cell type: the authors' Matlab code as transcribed by M. Clerx
# in Myokit format ("ohara-2011.mmt", CardiacModelling/tailored-ipsc-models; GPL-3 like the
# original code, so it is not shipped here), run with Myokit 1.39.2 CVODE at rtol = atol =
# 1e-10 for 3000 beats from Text S1's initial state, APD90 measured with ep.from_trace on the
# last beat (sampled every 0.01 ms). Its state derivatives equal ORd.rhs to <= 3e-14 relative
# for all three cell types (same equations and transmural factors). Beats 2000 and 3000 agree
# to 1e-5 ms, so these are steady-state values.
ORD_APD90_PUBLISHED = {"endo": 271.0}
ORD_APD90_REFERENCE = {"endo": 267.81, "epi": 227.24, "M": 327.69}


@pytest.fixture(scope="module")
def ord_control():
    out = {}
    for ct in ("endo", "epi", "M"):
        r = ep.pace(ep.ORd(celltype=ct), {}, 3, record="last")
        assert int(r.status) == 0
        out[ct] = {k: float(v[0]) for k, v in r.biomarkers.items()}
    return out


def test_ord_control_apd90_at_1hz(ord_control):
    for ct, want in ORD_APD90_PUBLISHED.items():
        assert ord_control[ct]["APD90"] == pytest.approx(want, rel=0.05), ct
    for ct, want in ORD_APD90_REFERENCE.items():
        got = ord_control[ct]["APD90"]
        assert got == pytest.approx(want, rel=0.05), ct  # the criterion
        # actual agreement with the default Rush-Larsen steps (from the shipped 1 Hz steady
        # state): endo +0.1 %, epi +0.3 %, M +1.3 %. The M-cell offset is the default step
        # (dt_max 0.5 ms) shifting the steady state (Na_i 8.80 vs 9.01 mM): started from the
        # same (shipped) state, one beat agrees with CVODE to 0.06 ms (docs/models/ep.md).
        assert got == pytest.approx(want, rel=0.015), ct
    endo, epi, M = ord_control["endo"], ord_control["epi"], ord_control["M"]
    assert epi["APD90"] < endo["APD90"] < M["APD90"]
    for b in (endo, epi, M):
        assert -90.0 < b["V_rest"] < -85.0
        assert 30.0 < b["V_peak"] < 50.0
        assert 200.0 < b["dVdt_max"] < 400.0
        assert not b["EAD"] and not b["RF"]


def test_ord_shipped_state_is_steady(ord_control):
    """The state returned by ORd.init is the 1 Hz steady state: a beat hardly changes it."""
    m = ep.ORd()
    p, _ = m.complete({})
    y0 = m.init(p)
    r = ep.pace(m, {}, 1, record="last")
    for k in ("Na_i", "K_i", "Ca_nsr"):
        assert float(r.state[k]) == pytest.approx(float(y0[k]), rel=2e-3), k


def test_ord_ikr_block_prolongs_apd_dose_dependently():
    m = ep.ORd()
    frac = jnp.array([1.0, 0.75, 0.5])
    p = drugs.apply_block(m, {}, {"IKr": frac})
    apd = np.asarray(ep.pace(m, p, 5, record="last").last()["APD90"])
    assert np.all(np.diff(apd) > 10.0)


@pytest.mark.slow
def test_ord_eads_under_strong_ikr_block_at_slow_pacing():
    """O'Hara et al. 2011 (Fig. 14): IKr block at slow pacing (CL 2000 ms) induces EADs.

    Here: M cell, CL 2000 ms, 90 % IKr block -> EADs; control and 50 % block -> none.
    """
    m = ep.ORd(celltype="M")
    frac = jnp.array([1.0, 0.5, 0.1])
    p = drugs.apply_block(m, {"BCL": 2000.0}, {"IKr": frac})
    res = ep.pace(m, p, 20, record="all")
    ead = np.asarray(res.biomarkers["EAD"]).any(axis=0)
    abnormal = ead | np.asarray(res.biomarkers["RF"]).any(axis=0)
    assert not abnormal[0] and not abnormal[1]
    assert ead[2]


def test_depolarisation_failure_and_unrepolarised_start_are_abnormal():
    """Near-complete INa + ICaL block: no action potential (DF), no APD change reported.

    And a beat that starts depolarised (the previous one did not repolarise) is RF even
    when it repolarises by its end.
    """
    m = ep.ORd()
    # a third cell (half ICaL block, not checked) makes the batch of 3 of the IKr-block
    # test: the same compiled ORd program (the number of beats is traced)
    block = {"INa": jnp.array([1.0, 0.03, 1.0]), "ICaL": jnp.array([1.0, 0.3, 0.5])}
    p = drugs.apply_block(m, {}, block)
    b = {k: np.asarray(v) for k, v in ep.pace(m, p, 3, record="last").last().items()}
    assert not b["DF"][0] and b["DF"][1]
    assert b["V_peak"][0] > 30.0 and b["V_peak"][1] < 0.0
    # the same from a dense trace
    t = np.linspace(0.0, 1000.0, 10001)
    bump = -88.0 + 40.0 * np.exp(-np.maximum(t - 1.0, 0.0) / 20.0) * (t > 1.0)
    assert ep.from_trace(t, bump)["DF"] and not ep.from_trace(t, bump)["RF"]
    late = np.where(t < 300.0, -20.0 + 0.0 * t, -88.0)  # starts at -20 mV, repolarises
    late[10:20] = 30.0
    assert ep.from_trace(t, late)["RF"]
    # in a drug trial the DF models count as abnormal and have no APD90 change
    ctrl = ep.pace(m, {}, 2, record="last")
    st = {k: np.asarray(v)[None] for k, v in ctrl.state.items()}
    tr = cell_population.drug_screen(m, {"GNa": np.array([m.param("GNa").value])}, st,
                               ["quinidine"], (1.0, 30.0), n_beats=3)  # fmt: skip
    hi = tr[tr.multiple == 30.0].iloc[0]
    assert bool(hi.DF) and bool(hi.abnormal) and np.isnan(hi.dAPD90_pct)
    lo = tr[tr.multiple == 1.0].iloc[0]
    assert not lo.DF and lo.dAPD90_pct > 0
    summary, risk = cell_population.summarise(tr)
    assert summary.set_index("multiple").loc[30.0, "DF_pct"] == 100.0


def test_population_is_one_batched_run_without_recompiling():
    key = jax.random.key(0)
    p = cell_population.sample(LR, key, 16, names=("gNa", "gsi", "gK", "gK1"), sigma=0.2)
    r1 = ep.pace(LR, p, 2, record="last")
    assert r1.last()["APD90"].shape == (16,)
    assert np.all(np.asarray(r1.status) == 0)
    n0 = eqx.debug.get_num_traces(_pace)
    ep.pace(LR, {k: v * 1.01 for k, v in p.items()}, 2, record="last")
    assert eqx.debug.get_num_traces(_pace) == n0, (
        "a second population of the same size must not recompile"
    )


def test_cli_safety_trial_writes_tables_and_rejects_bad_input(tmp_path):
    """`twinjax safety`: population x compounds x concentrations from the command line."""
    import subprocess
    import sys

    import pandas as pd

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "twinjax.cli", "safety", *a],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip

    bad = run("--compounds", "aspirinx", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "aspirinx" in bad.stdout + bad.stderr
    assert not (tmp_path / "bad").exists()  # rejected before anything runs or is written
    spec = tmp_path / "safety.toml"
    spec.write_text(EXAMPLE_SAFETY.read_text().replace("drug_beats", "drug_beat"))
    bad = run(str(spec), "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "unknown key 'drug_beat' in [safety]" in bad.stdout, bad.stdout
    spec.write_text(EXAMPLE_SAFETY.read_text().replace('cell = "endo"', 'cell = "atrial"'))
    bad = run(str(spec), "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "cell must be one of" in bad.stdout, bad.stdout
    out = tmp_path / "s"
    # the shipped specification, with the options overriding it for a quick run
    r = run(str(EXAMPLE_SAFETY), "--n", "4", "--beats", "3", "--drug-beats", "2",
            "--compounds", "dofetilide", "--multiples", "1,30", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    record = json.loads((out / "safety.json").read_text())
    assert record["spec"]["n"] == 4 and record["spec"]["compounds"] == ["dofetilide"]
    assert record["spec"]["sigma"] == 0.3 and record["spec"]["name"].startswith("Cardiac")
    assert record["n_accepted"] == len(pd.read_csv(out / "models.csv")) // 2
    models = pd.read_csv(out / "models.csv")
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["multiple"]) == {1.0, 30.0}
    assert len(models) == 2 * int((models["multiple"] == 1.0).sum())
    s = summary.set_index("multiple")["dAPD90_median_pct"]
    assert s[30.0] > s[1.0] > 0  # dofetilide (IKr block) prolongs APD90 with dose
    assert (out / "safety.png").stat().st_size > 1000
    assert "risk" in pd.read_csv(out / "risk.csv").columns


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(multiples=[1.0, -3.0]), "multiples must be a non-empty list of positive"),
        (dict(multiples=[]), "multiples must be a non-empty list"),
        (dict(n=0), "n must be an integer >= 1"),
        (dict(beats=2.5), "beats must be an integer"),
        (dict(compounds="dofetilide"), "compounds must be a non-empty list"),
        (dict(compounds=["Dofetilide", "aspirinx"]), "unknown \\['aspirinx'\\]"),
        (dict(sigma=0.0), "sigma must be a number in \\(0, 1\\]"),
        (dict(cell="atrial"), "cell must be one of"),
    ],
)
def test_safety_spec_errors_name_the_field(change, match):
    import tomllib

    from twinjax.trial import SafetyTrial, SpecError

    d = tomllib.loads(EXAMPLE_SAFETY.read_text())
    d["safety"].update(change)
    with pytest.raises(SpecError, match=match):
        SafetyTrial.from_dict(d)


def test_safety_spec_reads_the_example_and_overrides():
    from twinjax.trial import SafetyTrial, SpecError

    st = SafetyTrial.from_toml(EXAMPLE_SAFETY)
    assert st.compounds == ("dofetilide", "quinidine", "verapamil", "ranolazine")
    assert st.multiples == (1.0, 10.0, 30.0) and st.n == 200 and st.cell == "endo"
    st = SafetyTrial.from_toml(EXAMPLE_SAFETY, n=8, cell="M", seed=None)
    assert (st.n, st.cell, st.seed) == (8, "M", 0)
    with pytest.raises(SpecError, match="missing table \\[safety\\]"):
        SafetyTrial.from_dict({})
    with pytest.raises(SpecError, match="unknown key 'trial' in the top level"):
        SafetyTrial.from_dict({"safety": {}, "trial": {}})


def test_pace_to_steady_state_stops_when_the_beats_repeat():
    """Beats until the state repeats (the shared fixed-point solver, plain iteration),
    then one more beat for the biomarkers; tol and max_beats are values of one program."""
    gk = jnp.array([0.282, 0.35])
    p = {"gK": gk}
    y0 = LR.init(LR.complete(p)[0])
    r = ep.pace_to_steady_state(LR, p, tol=1e-6, max_beats=400)
    assert np.all(np.asarray(r.status) == 0)
    beats = np.asarray(r.biomarkers["beats"][-1])
    assert np.all((beats > 2) & (beats < 400))
    assert np.all(np.asarray(r.biomarkers["residual"][-1]) < 1e-6)
    # one more beat from the steady state: the final beat's biomarkers, the state repeats
    one = ep.pace(LR, p, 1, y0=r.state, record="last")
    for k in ("APD90", "qNet", "V_peak", "dVdt_max"):
        np.testing.assert_allclose(one.biomarkers[k][-1], r.biomarkers[k][-1], rtol=1e-12)
    for k in LR.state_names:
        change = np.abs(np.asarray(one.state[k]) - np.asarray(r.state[k]))
        assert np.all(change < 1e-6 * (np.abs(np.asarray(y0[k])) + 1e-6)), k
    # fewer beats than it takes: NOT_CONVERGED, and the beats paced are the maximum
    r2 = ep.pace_to_steady_state(LR, p, tol=1e-6, max_beats=2)
    assert np.all(np.asarray(r2.status) == tj.Status.NOT_CONVERGED)
    assert np.all(np.asarray(r2.biomarkers["beats"][-1]) == 2)
    # Anderson acceleration: the same steady state (to the tolerance's order)
    ra = ep.pace_to_steady_state(LR, p, tol=1e-6, max_beats=400, method="anderson")
    assert np.all(np.asarray(ra.status) == 0)
    for k in LR.state_names:
        diff = np.abs(np.asarray(ra.state[k]) - np.asarray(r.state[k]))
        assert np.all(diff < 1e-5 * (np.abs(np.asarray(y0[k])) + 1e-6)), k
    with pytest.raises(ValueError, match="method"):
        ep.pace_to_steady_state(LR, p, method="newton")
    with pytest.raises(ValueError, match="tol"):
        ep.pace_to_steady_state(LR, p, tol=0.0)
    with pytest.raises(ValueError, match="max_beats"):
        ep.pace_to_steady_state(LR, p, max_beats=0)
