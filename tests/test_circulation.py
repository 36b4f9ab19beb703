"""Closed-loop circulation (Regazzoni et al. 2022) with baroreflex and drug coupling."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import circulation as circ
from twinjax.models import pk
from twinjax.models.circulation import _beats
from twinjax.solve._simulate import simulate_core

ENS = tj.solvers.Ensemble(rtol=1e-6, atol=1e-6)

# Compile count: a steady-state search compiles one program per model, solver, batch
# size and static argument. ``tol`` is an input of the program (to_periodic_steady_state
# makes it an array; quasi_static too), so searches with other tolerances share the
# program of the same batch size (checked in test_quasi_static_...). The
# steady-state searches of Circulation() with the Ensemble solver run 4 patients (4
# heart rates, or 4 concentrations), those of the baroreflex model too.
TOL_REST = jnp.asarray(1e-5)


@pytest.fixture(scope="module")
def rest():
    return circ.to_periodic_steady_state(circ.Circulation(), None, ENS, tol=TOL_REST)


def test_resting_hemodynamics_in_textbook_ranges(rest):
    """Guyton & Hall (MAP, CO); Maceira et al. 2006 (CMR LV EF)."""
    m = {k: float(v) for k, v in rest.metrics.items()}
    assert bool(rest.converged) and int(rest.status) == 0
    assert 85.0 <= m["MAP"] <= 100.0, m
    assert 4.5 <= m["CO"] <= 6.5, m
    assert 50.0 <= m["EF"] <= 70.0, m
    assert m["SBP"] > m["MAP"] > m["DBP"]
    # stroke volume from the aortic-flow integral equals EDV - ESV (no regurgitation)
    assert m["SV"] == pytest.approx(m["EDV"] - m["ESV"], rel=5e-3)
    V, p = circ.pv_loop(rest)
    assert V.shape == p.shape == (201,)
    assert float(jnp.max(p)) == pytest.approx(m["SBP"], rel=0.05)


def test_blood_volume_conserved_over_100_beats():
    m = circ.Circulation()
    r = tj.simulate(m, {"HR": 75.0}, None, jnp.linspace(0.0, 80.0, 2001), solver=ENS)
    assert int(r.status) == 0 and float(r.states["phi"][-1]) == pytest.approx(100.0)
    V = np.asarray(r.outputs["V_total"])
    assert np.max(np.abs(V - V[0])) < 1e-11 * V[0]


def test_converges_and_counts_beats_per_patient():
    m = circ.Circulation()
    hr = jnp.array([50.0, 60.0, 90.0, 75.0])  # 4: the program of the quasi-static tests
    ss = circ.to_periodic_steady_state(m, {"HR": hr}, ENS)
    assert np.all(np.asarray(ss.converged)) and np.all(np.asarray(ss.status) == 0)
    b = np.asarray(ss.beats)
    assert b.shape == (4,) and np.all(b >= 2) and np.all(b < 200)
    np.testing.assert_allclose(ss.metrics["HR"], [50.0, 60.0, 90.0, 75.0], rtol=1e-9)
    # restarting from the steady state converges at once and gives the same beat; with
    # another beat limit, the same compiled search (max_beats is an input, like tol)
    traces = eqx.debug.get_num_traces(_beats._pss_core)
    ss2 = circ.to_periodic_steady_state(m, {"HR": hr}, ENS, y0=ss.state, max_beats=5)
    assert eqx.debug.get_num_traces(_beats._pss_core) == traces
    assert np.all(np.asarray(ss2.beats) <= 2)
    np.testing.assert_allclose(ss2.metrics["MAP"], ss.metrics["MAP"], rtol=2e-3)


def test_ensemble_agrees_with_diffrax():
    m = circ.Circulation(baroreflex=True)
    # 4 patients: the steady-state program of the baroreflex quasi-static test
    p = {"HR": jnp.array([60.0, 45.0, 95.0, 75.0]), "R_AR_SYS": jnp.array([0.8, 1.1, 0.6, 0.9])}
    ts = jnp.linspace(0.0, 2.0, 41)
    ref = tj.simulate(m, p, None, ts, solver=tj.solvers.Diffrax(rtol=1e-11, atol=1e-11))
    for method in ("dopri5", "tsit5"):
        got = tj.simulate(m, p, None, ts, solver=tj.solvers.Ensemble(method, rtol=1e-9, atol=1e-9))
        assert np.all(np.asarray(got.status) == 0)
        for k in ("p_AR", "p_LV", "V_total", "HR_eff"):
            a, b = np.asarray(got.outputs[k]), np.asarray(ref.outputs[k])
            assert np.max(np.abs(a - b)) / np.max(np.abs(b)) < 1e-6, (method, k)
    # and at periodic steady state, by beat metrics
    se = circ.to_periodic_steady_state(m, p, ENS)
    sd = circ.to_periodic_steady_state(m, p, tj.solvers.Diffrax(rtol=1e-6, atol=1e-6))
    for k in ("MAP", "SBP", "DBP", "CO", "EF", "HR"):
        np.testing.assert_allclose(se.metrics[k], sd.metrics[k], rtol=2e-3, err_msg=k)


def test_batch_equals_single_to_tolerance():
    m = circ.Circulation()
    ts = jnp.linspace(0.0, 2.0, 21)
    hr = jnp.array([60.0, 48.0, 75.0])
    rb = tj.simulate(m, {"HR": hr}, None, ts)
    for i in range(3):
        ri = tj.simulate(m, {"HR": hr[i]}, None, ts)
        np.testing.assert_allclose(rb.outputs["p_AR"][i], ri.outputs["p_AR"], rtol=1e-6)
    n0 = eqx.debug.get_num_traces(simulate_core)
    tj.simulate(m, {"HR": hr * 1.1}, None, ts)
    assert eqx.debug.get_num_traces(simulate_core) == n0


def test_map_gradient_matches_finite_differences():
    m = circ.Circulation()
    ts = jnp.linspace(0.0, 2.0, 21)
    solver = tj.solvers.Diffrax(rtol=1e-12, atol=1e-12)
    names = ("R_AR_SYS", "C_AR_SYS", "EA_LV")
    p0 = {k: m.param(k).value for k in names}

    def map_beat1(p):
        r = tj.simulate(m, p, None, ts, solver=solver)
        return circ.beat_metrics(r, beat=1)["MAP"]

    # one jitted program gives the gradient and the values of the finite differences
    # (instead of the gradient's programs, a plain forward program and the eager
    # operations of beat_metrics on every call)
    value_and_grad = jax.jit(jax.value_and_grad(map_beat1))
    g = value_and_grad(p0)[1]

    def value(p):
        return value_and_grad(p)[0]

    for k in names:
        h = 1e-5 * p0[k]
        fd = (value({**p0, k: p0[k] + h}) - value({**p0, k: p0[k] - h})) / (2 * h)
        assert float(g[k]) == pytest.approx(float(fd), rel=1e-3), k
    assert float(g["R_AR_SYS"]) > 0


def _pk_hours():
    """A 1-compartment IV PK result (h, mg/L) with a slowly falling concentration."""
    return tj.simulate(
        pk.one_compartment(),
        {"CL": 2.0, "V": 40.0},
        tj.Regimen([tj.Dose(200.0, "central", 0.0)]),
        jnp.linspace(0.0, 48.0, 97),
    )


VASODILATOR = tj.Link("pk.C", "circ.R_AR_SYS", "emax", {"Emax": -0.5, "EC50": 2.0})


def test_vasodilator_lowers_map_dose_dependently_and_baroreflex_compensates():
    r = _pk_hours()
    times = jnp.array([48.0, 24.0, 8.0, 0.5])  # falling concentrations -> rising
    out = {}
    for reflex in (False, True):
        m = circ.Circulation(baroreflex=reflex)
        out[reflex] = circ.quasi_static(m, r, times, [VASODILATOR], solver=ENS)
        assert np.all(np.asarray(out[reflex]["converged"]))
    C = np.asarray(out[False]["C"]["C"])
    assert np.all(np.diff(C) > 0)
    map0, map1 = (np.asarray(out[k]["metrics"]["MAP"]) for k in (False, True))
    hr1 = np.asarray(out[True]["metrics"]["HR"])
    assert np.all(np.diff(map0) < 0) and np.all(np.diff(map1) < 0)  # dose-dependent
    assert np.all(np.diff(hr1) > 0)  # reflex tachycardia
    drop0, drop1 = map0[0] - map0[-1], map1[0] - map1[-1]
    assert 0.2 * drop0 < drop1 < 0.9 * drop0  # partly compensated


def test_negative_inotrope_and_rate_lowering_drug():
    r = _pk_hours()
    # 4 concentrations (the program of the other quasi-static test); the checks compare
    # the lowest (48 h) with the highest (0.5 h)
    times = jnp.array([48.0, 24.0, 8.0, 0.5])
    m = circ.Circulation()
    ino = circ.quasi_static(
        m, r, times, [tj.Link("pk.C", "circ.EA_LV", "emax", {"Emax": -0.4, "EC50": 2.0})],
        solver=ENS,
    )  # fmt: skip
    rate = circ.quasi_static(
        m, r, times, [tj.Link("pk.C", "circ.HR", "emax", {"Emax": -0.3, "EC50": 2.0})],
        solver=ENS,
    )  # fmt: skip
    assert float(ino["metrics"]["EF"][-1]) < float(ino["metrics"]["EF"][0]) - 5.0
    assert float(rate["metrics"]["HR"][-1]) < 0.85 * float(rate["metrics"]["HR"][0])


@pytest.mark.slow
def test_quasi_static_agrees_with_full_coupling_for_slow_kinetics(rest):
    """Full coupling (PK in seconds) vs periodic steady states at C(t)."""
    pk_h = pk.one_compartment()  # hours, converted to the circulation's seconds
    coupled = tj.couple({"pk": pk_h, "circ": circ.Circulation()}, [VASODILATOR], time_unit="s")
    p = {"pk.CL": 40.0, "pk.V": 40.0}  # L/h: half-life ~ 42 min
    reg = tj.Regimen([tj.Dose(200.0, "pk.central", 0.0)])
    ts = jnp.linspace(0.0, 60.0, 1201)
    full = tj.simulate(coupled, p, reg, ts, solver=ENS)
    assert int(full.status) == 0
    # 4 beats: the search program of the other 4-patient steady states
    beats = [40, 46, 53, 59]
    got = [float(circ.beat_metrics(full, beat=b, prefix="circ.")["MAP"]) for b in beats]
    pk_r = tj.simulate(pk_h, {"CL": p["pk.CL"], "V": 40.0}, tj.Regimen(
        [tj.Dose(200.0, "central", 0.0)]), ts / 3600.0)  # fmt: skip
    tq = jnp.array([(b + 0.5) / 3600.0 for b in beats])  # h
    qs = circ.quasi_static(circ.Circulation(), pk_r, tq, [VASODILATOR], solver=ENS, tol=TOL_REST)
    want = np.asarray(qs["metrics"]["MAP"])
    np.testing.assert_allclose(got, want, rtol=5e-3)
    # and the drug effect itself is large compared with that agreement
    # another tolerance, a plain float: the program of the ``rest`` fixture (computed
    # before this test; tol is an input of the compiled search, not compiled in)
    traces = eqx.debug.get_num_traces(_beats._pss_core)
    ss = circ.to_periodic_steady_state(circ.Circulation(), None, ENS, tol=1e-3)
    assert eqx.debug.get_num_traces(_beats._pss_core) == traces
    map_rest = float(ss.metrics["MAP"])
    assert map_rest - want[0] > 10.0


@pytest.mark.slow
def test_saved_beat_in_the_iteration_is_bitwise_the_separate_integration():
    """``to_periodic_steady_state`` integrates each patient's saved beat in the loop of
    the iteration, as soon as it stops (``solve_fixed_point(final=...)``: one
    integration in the compiled program instead of two): the same beats, codes,
    states, metrics and dense beat, bitwise, as iterating first and integrating the
    saved beat after (the program it replaced), with a patient out of beats among
    them (Ensemble: saves are read from the dense output, they do not change the
    steps)."""
    from twinjax.solve._batch import batch_params, stack_initial
    from twinjax.solve._periodic import first_failure, solve_fixed_point

    m = circ.Circulation()
    # 4 patients and the default n_save: the search program of
    # test_converges_and_counts_beats_per_patient (max_beats, like tol, is an input)
    p = {"HR": jnp.array([70.0, 52.0, 95.0, 75.0])}
    kw = dict(tol=1e-3, max_beats=10, n_save=201)
    new = circ.to_periodic_steady_state(m, p, ENS, **kw)

    @jax.jit
    def two_integrations(p, Y0):
        G, embed, x0 = circ.beat_map(m, ENS, p, Y0)
        fp = solve_fixed_point(G, x0, method="plain", tol=kw["tol"], max_iter=kw["max_beats"])
        Y = embed(fp.x)
        n, S = Y.shape
        Z = jnp.concatenate([Y, jnp.zeros((n, 1))], -1)
        ss = jnp.broadcast_to(jnp.linspace(0.0, 1.0, kw["n_save"]), (n, kw["n_save"]))
        args = (p, jnp.zeros((n, S)))
        g = _beats._phase_field(m)
        Zs, Z1, st = ENS.integrate(g, jnp.zeros(n), jnp.ones(n), Z, ss, args, m)
        status = first_failure(fp.status, st)
        return (*circ.reduce_beat(m, p, Y, Zs, Z1, status), fp.iterations, status)

    pf, _, nb = batch_params(m, p, jnp.float64)
    state, metrics, dense, beats, status = two_integrations(
        pf, stack_initial(m, pf, None, nb, jnp.float64)
    )
    st = np.asarray(new.status)
    assert tj.Status.OK in st and tj.Status.NOT_CONVERGED in st, st
    np.testing.assert_array_equal(st, np.asarray(status))
    np.testing.assert_array_equal(np.asarray(new.beats), np.asarray(beats))
    for got, ref in ((new.state, state), (new.metrics, metrics), (new.beat, dense)):
        assert got.keys() == ref.keys()
        for k in ref:
            if k in m.state_names or k == "t" or got is not new.beat:
                np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(ref[k]), err_msg=k)
            else:  # outputs: observe() of the same states, compiled in another program
                np.testing.assert_allclose(
                    np.asarray(got[k]), np.asarray(ref[k]), rtol=1e-14, atol=1e-14, err_msg=k
                )
