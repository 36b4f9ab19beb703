"""solvers.Ensemble: order, forward mode, failures (agreement with Diffrax over the
catalogue is a catalogue check: ``model_checks.py``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import pk

REF = tj.solvers.Diffrax(rtol=1e-11, atol=1e-12)


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-300))


@pytest.mark.parametrize("method,order", [("dopri5", 5), ("tsit5", 5), ("rk4", 4)])
def test_convergence_order(method, order):
    """Global error of fixed steps on y' = -y + sin(4t) falls as h^order."""
    solver = tj.solvers.Ensemble(method, dt=0.1)
    w = 4.0

    def f(t, y, args):
        return -y + jnp.sin(w * t)[:, None]

    def exact(t):
        c = 1 + w / (1 + w**2)
        return c * np.exp(-t) + (np.sin(w * t) - w * np.cos(w * t)) / (1 + w**2)

    errs = []
    steps = [16, 32, 64, 128]
    for n in steps:
        h = 2.0 / n
        t = jnp.zeros(1)
        y = jnp.ones((1, 1))
        k = f(t, y, None)
        for _ in range(n):
            y1, k_end, _, _ = solver._step(f, t, y, k, jnp.full(1, h), None)
            t = t + h
            y, k = y1, (k_end if k_end is not None else f(t, y1, None))
        errs.append(abs(float(y[0, 0]) - exact(2.0)))
    slopes = -np.diff(np.log(errs)) / np.log(2)
    assert slopes[-1] == pytest.approx(order, abs=0.15), slopes
    assert np.all(np.diff(slopes) > 0)  # approaching the order from below


def test_forward_mode_matches_reverse_mode_of_diffrax():
    model = pk.two_compartment("first_order")
    reg = tj.Regimen.repeat(100.0, "depot", every=12.0, n=3)
    times = jnp.linspace(0.0, 36.0, 37)

    def out(solver):
        def fn(cl, v):
            return tj.simulate(model, {"CL": cl, "V": v}, reg, times, solver=solver)["C"]

        return fn

    jf = jax.jacfwd(out(tj.solvers.Ensemble(rtol=1e-10, atol=1e-12)), argnums=(0, 1))(4.0, 40.0)
    jr = jax.jacrev(out(REF), argnums=(0, 1))(4.0, 40.0)
    for a, b in zip(jf, jr):
        assert _rel(a, b) < 1e-6


def test_failing_patient_flagged_and_others_bitwise_intact():
    model = pk.one_compartment()
    reg = tj.Regimen([tj.Dose(100.0, "central")])
    times = jnp.linspace(0.0, 10.0, 11)
    solver = tj.solvers.Ensemble(max_steps=200)
    good = tj.simulate(model, {"CL": jnp.array([2.0, 3.0])}, reg, times, solver=solver)
    mixed = tj.simulate(
        model,
        {"CL": jnp.array([2.0, 1e4, 3.0]), "V": jnp.array([50.0, 1e-4, 50.0])},
        reg,
        times,
        solver=solver,
    )
    st = np.asarray(mixed.status)
    assert st[0] == 0 and st[2] == 0 and st[1] != 0
    np.testing.assert_array_equal(np.asarray(mixed["C"])[[0, 2]], np.asarray(good["C"]))


def test_rk4_requires_dt():
    with pytest.raises(ValueError, match="dt"):
        tj.solvers.Ensemble("rk4")


def _decay_or_blowup(t, y, a):
    """y' = a y + b y^2 per patient (``y`` is ``(N, 1)``)."""
    return a["a"][:, None] * y + a["b"][:, None] * y * y


def _integrate(solver, t1, y0, args):
    n = y0.shape[0]
    fn = jax.jit(
        lambda t1, y0, args: solver.integrate(
            _decay_or_blowup, jnp.zeros(n), t1, y0, None, args, None
        )[1:]
    )
    return fn(t1, y0, args)


def test_fixed_step_lean_loop_per_patient_end_times_and_failures():
    """The fixed-step loop (no per-step selects): patients with different end times,
    a zero-length segment and one that blows up share a batch; each finite patient
    is bitwise what it is alone and RK4-accurate; the blown-up one is NONFINITE."""
    solver = tj.solvers.Ensemble("rk4", dt=0.01)
    a = jnp.array([-1.0, -2.0, 0.0, -1.0])
    b = jnp.array([0.0, 0.0, 1.0, 0.0])  # patient 2: y' = y^2 from 2, infinite at 0.5
    t1 = jnp.array([1.0, 0.555, 1.0, 0.0])
    y0 = jnp.array([[1.0], [1.0], [2.0], [3.0]])
    y, status = _integrate(solver, t1, y0, {"a": a, "b": b})
    np.testing.assert_array_equal(np.asarray(status), [0, 0, tj.Status.NONFINITE, 0])
    y = np.asarray(y)
    exact = np.exp(np.asarray(a * t1))
    # RK4's global error on y' = a y: about t |a| (a h)^4 / 120 = 1.5e-9 for patient 1
    np.testing.assert_allclose(y[[0, 1], 0], exact[[0, 1]], rtol=3e-9)
    assert y[3, 0] == 3.0  # a zero-length segment leaves the state as it is
    for i in (0, 1):
        yi, si = _integrate(
            solver, t1[i : i + 1], y0[i : i + 1], {"a": a[i : i + 1], "b": b[i : i + 1]}
        )
        assert int(si[0]) == 0
        assert np.asarray(yi)[0, 0] == y[i, 0]


@pytest.mark.parametrize("method", ["rk4", "tsit5"])
def test_rows_and_stacked_layouts_agree(method, monkeypatch):
    """The loop on a tuple of rows (models of up to ROWS_MAX states) and on the
    stacked (S, N) array (larger models) compute the same steps."""
    from twinjax.solve import _ensemble

    solver = tj.solvers.Ensemble(method, dt=0.01, rtol=1e-8, atol=1e-10)
    args = {"a": jnp.array([-1.0, -3.0, 0.5]), "b": jnp.array([0.1, 0.0, -0.2])}
    t1 = jnp.array([1.0, 0.7, 2.0])
    y0 = jnp.array([[1.0], [2.0], [0.5]])
    monkeypatch.setattr(_ensemble, "ROWS_ADAPTIVE", True)  # rows for tsit5 too
    assert solver._rows(1)
    rows = _integrate(solver, t1, y0, args)
    monkeypatch.setattr(_ensemble, "ROWS_MAX", 0)
    assert not solver._rows(1)
    stacked = _integrate(solver, t1, y0, args)
    np.testing.assert_array_equal(np.asarray(rows[1]), np.asarray(stacked[1]))
    np.testing.assert_allclose(np.asarray(rows[0]), np.asarray(stacked[0]), rtol=1e-12)


@pytest.mark.parametrize("infused", [False, True])
def test_lean_loop_saves_match_the_ungated_loop(infused, monkeypatch):
    """The lean fixed-step loop looks save times up only in steps where a scalar bound
    of the patients' times has reached the earliest pending save (``lean_body``).
    Saves at 0, on the step grid, between steps, at dose times and at the end, for
    patients whose doses (segments) differ, agree with the general loop on the stacked
    layout, which looks the saves up in every step: a save missed by the gate would be
    taken a step late (off by about dt * |y'|, 1e-2 here). Without infusions the field
    gets no rates (``vector_field``): a patient without one is bitwise the same in a
    batch with an infused patient (rates added, all 0 for it) and alone (no rates)."""
    from twinjax.solve import _ensemble

    model = pk.one_compartment()
    second = (
        tj.Dose(50.0, "central", time=2.3, dur=1.5)
        if infused
        else tj.Dose(50.0, "central", time=2.3)
    )
    regs = [
        tj.Regimen([tj.Dose(100.0, "central")]),
        tj.Regimen([tj.Dose(100.0, "central", time=0.7), second]),
        tj.Regimen([tj.Dose(80.0, "central", time=3.333)]),
    ]
    params = {"CL": jnp.array([2.0, 3.0, 5.0]), "V": jnp.array([20.0, 30.0, 10.0])}
    times = jnp.array([0.0, 0.123, 0.5, 0.7, 1.0, 2.3, 2.35, 3.333, 3.8, 4.05, 6.0])
    lean = tj.simulate(model, params, regs, times, solver=tj.solvers.Ensemble("rk4", dt=0.05))
    monkeypatch.setattr(_ensemble, "ROWS_MAX", 0)
    # another solver (max_steps plays no part in a fixed step), so simulate retraces
    stacked_solver = tj.solvers.Ensemble("rk4", dt=0.05, max_steps=99_999)
    assert not stacked_solver._rows(len(model.state_names))
    stacked = tj.simulate(model, params, regs, times, solver=stacked_solver)
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(lean.status), 0)
    np.testing.assert_allclose(np.asarray(lean["C"]), np.asarray(stacked["C"]), rtol=1e-12)
    # and RK4-accurate (saves between steps by cubic Hermite interpolation)
    ref = tj.simulate(model, params, regs, times, solver=REF)
    np.testing.assert_allclose(np.asarray(lean["C"]), np.asarray(ref["C"]), rtol=1e-5, atol=1e-9)
    alone = tj.simulate(
        model,
        {k: v[:1] for k, v in params.items()},
        regs[:1],
        times,
        solver=tj.solvers.Ensemble("rk4", dt=0.05),
    )
    np.testing.assert_array_equal(np.asarray(alone["C"])[0], np.asarray(lean["C"])[0])


def test_save_gate_and_blocks_leave_the_steps_as_they_are():
    """The general loop's save gate (``step_body``): saves are written from the dense
    output only in steps that hold one, so a patient whose save times all lie past its
    end, or one that saves, takes bitwise the steps it takes without saves; saves in
    blocks (the save path runs block by block, as the one without) are bitwise those
    of the whole batch, and accurate."""
    n = 5
    a = jnp.array([-1.0, -2.0, -0.5, -3.0, -1.5])
    args = {"a": a, "b": jnp.zeros(n)}
    t0, t1 = jnp.zeros(n), jnp.array([1.0, 1.0, 0.8, 1.0, 1.0])
    y0 = jnp.ones((n, 1))
    grid = jnp.linspace(0.0, 1.0, 7)
    # patients 0, 2 and 4 save (2 only up to its end, 0.8); 1 and 3 save past the end
    ts = jnp.where((jnp.arange(n) % 2 == 0)[:, None], grid[None, :], 2.0)

    def run(block, ts):
        s = tj.solvers.Ensemble("dopri5", rtol=1e-8, atol=1e-10, block=block)
        return jax.jit(lambda: s.integrate(_decay_or_blowup, t0, t1, y0, ts, args, None))()

    _, y_plain, st_plain = run(0, None)
    out_blocks, y_blocks, st_blocks = run(2, ts)
    out_whole, y_whole, st_whole = run(0, ts)
    np.testing.assert_array_equal(np.asarray(st_plain), 0)
    for y, st in ((y_blocks, st_blocks), (y_whole, st_whole)):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(y_plain))
        np.testing.assert_array_equal(np.asarray(st), 0)
    np.testing.assert_array_equal(np.asarray(out_blocks), np.asarray(out_whole))
    out = np.asarray(out_whole)[..., 0]
    assert np.all(out[[1, 3]] == 0.0)  # nothing written past a patient's end
    assert np.all(out[2, grid > 0.8] == 0.0)
    exact = np.exp(np.asarray(a)[:, None] * np.asarray(grid)[None, :])
    saved = np.ones_like(out, bool)
    saved[[1, 3]] = False
    saved[2, grid > 0.8] = False
    np.testing.assert_allclose(out[saved], exact[saved], rtol=1e-7)


def test_step_reduction_extremes_between_steps():
    """A per-step reduction (``integrate(..., reduce=)``): the extremes of each step's
    cubic Hermite interpolant find a peak between step ends to the integration's
    accuracy (the step ends alone miss it); the reduction changes neither the states
    nor the saves; in blocks as whole."""
    from twinjax.solve import StepReduction, hermite_extrema

    N = 5
    w = jnp.linspace(1.0, 3.0, N)

    def f(t, y, args):  # y = (sin wt, cos wt)
        a = args[:, 0]
        return jnp.stack([a * jnp.cos(a * t), -a * jnp.sin(a * t)], -1)

    def update(A, ok, t, h, y, y_new, k, k_new):
        lo, hi = hermite_extrema(y[0], y_new[0], h * k[0], h * k_new[0])
        ends = jnp.maximum(y[0], y_new[0])
        new = jnp.stack([jnp.maximum(A[0], hi), jnp.minimum(A[1], lo), jnp.maximum(A[2], ends)])
        return jnp.where(ok[None], new, A)

    y0 = jnp.tile(jnp.array([0.0, 1.0]), (N, 1))
    t0, t1, ts = jnp.zeros(N), jnp.full(N, 3.0), jnp.linspace(0.0, 3.0, 7)[None]
    red = StepReduction(jnp.zeros((N, 3)), update)
    for method, kw in (("dopri5", {}), ("rodas5p", {}), ("rk4", dict(dt=0.05))):
        sol = tj.solvers.Ensemble(method, rtol=1e-8, atol=1e-10, **kw)
        out, y1, st, acc = sol.integrate(f, t0, t1, y0, ts, w[:, None], None, reduce=red)
        ref = sol.integrate(f, t0, t1, y0, ts, w[:, None], None)
        assert np.all(np.asarray(st) == 0)
        if method != "rk4":
            np.testing.assert_array_equal(np.asarray(out), np.asarray(ref[0]))
            np.testing.assert_array_equal(np.asarray(y1), np.asarray(ref[1]))
        else:  # rk4 with a reduction: the general body instead of the lean one
            np.testing.assert_allclose(np.asarray(out), np.asarray(ref[0]), rtol=0, atol=1e-13)
        acc = np.asarray(acc)
        err_interp = np.abs(acc[:, 0] - 1.0)
        err_ends = np.abs(acc[:, 2] - 1.0)
        assert np.all(err_interp < 2e-6), (method, err_interp)
        assert np.all(err_interp <= err_ends) and np.max(err_ends) > 10 * np.max(err_interp)
        lo = np.array([min(0.0, np.sin(np.linspace(0.0, 3.0 * a, 100_001)).min()) for a in w])
        np.testing.assert_allclose(acc[:, 1], lo, atol=2e-6)
    blocked = tj.solvers.Ensemble("dopri5", rtol=1e-8, atol=1e-10, block=2)
    acc_b = blocked.integrate(f, t0, t1, y0, None, w[:, None], None, reduce=red)[3]
    whole = tj.solvers.Ensemble("dopri5", rtol=1e-8, atol=1e-10, block=0)
    acc_w = whole.integrate(f, t0, t1, y0, None, w[:, None], None, reduce=red)[3]
    np.testing.assert_array_equal(np.asarray(acc_b), np.asarray(acc_w))
