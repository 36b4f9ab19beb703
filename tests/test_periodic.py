"""The periodic-steady-state solver family (solve/_periodic.py) and its status codes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import circulation as circ
from twinjax.models import pk
from twinjax.models._multiscale import QuasiStaticTwin, steady_state_cohort
from twinjax.solve._periodic import solve_fixed_point

# three patients, each an affine map G(x) = A x + b on R^3 (patients independent):
# 0 and 1 contract (spectral radius 0.9 and 0.6: slow and fast), 2 is a shift x + 1
# with no fixed point at all
_A = np.stack([
    [[0.9, 0.05, 0.0], [0.0, 0.5, 0.1], [0.02, 0.0, 0.3]],
    [[0.6, 0.0, 0.0], [0.1, 0.4, 0.0], [0.0, 0.2, 0.2]],
    np.eye(3),
])  # fmt: skip
_B = np.array([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0], [1.0, 1.0, 1.0]])


def _affine(x, active):
    gx = jnp.einsum("nij,nj->ni", jnp.asarray(_A), x) + jnp.asarray(_B)
    bad = ~jnp.all(jnp.isfinite(gx), axis=-1)
    return gx, jnp.where(bad, int(tj.Status.NONFINITE), 0).astype(jnp.int32)


def _exact(i):
    return np.linalg.solve(np.eye(3) - _A[i], _B[i])


@pytest.mark.parametrize("method", ["plain", "anderson", "newton"])
def test_fixed_points_per_patient_and_not_converged_code(method):
    x0 = jnp.zeros((3, 3))
    one = jnp.ones((3, 3))  # absolute residuals
    fp = jax.jit(
        lambda x: solve_fixed_point(_affine, x, method=method, tol=1e-10, max_iter=400, scale=one)
    )(x0)
    st = np.asarray(fp.status)
    assert st.tolist() == [tj.Status.OK, tj.Status.OK, tj.Status.NOT_CONVERGED]
    assert np.asarray(fp.converged).tolist() == [True, True, False]
    for i in (0, 1):  # the converged ones are the exact fixed points
        np.testing.assert_allclose(np.asarray(fp.x[i]), _exact(i), rtol=1e-9, atol=1e-9)
    it = np.asarray(fp.iterations)
    assert it[2] == 400  # the one without a fixed point used up its iterations
    if method == "plain":  # contraction 0.90 and 0.6 per step (spectral radii)
        assert 150 < it[0] < 300 and 30 < it[1] < 80
    elif method == "anderson":  # a 3-dimensional affine map: exact after ~ 3 + 1 steps
        assert it[0] <= 8 and it[1] <= 8
    else:  # Newton is exact for an affine map: one step, one check
        assert it[0] == 2 and it[1] == 2


def test_newton_user_jacobian_equals_ad_and_nan_patient_stops():
    A = jnp.asarray(_A)
    x0 = jnp.zeros((3, 3)).at[1, 0].set(jnp.nan)  # patient 1 starts from NaN
    run = lambda jac: solve_fixed_point(  # noqa: E731
        _affine, x0, method="newton", tol=1e-12, max_iter=20, scale=jnp.ones((3, 3)), jac=jac
    )
    ad = run(None)
    user = run(lambda x, active: jnp.broadcast_to(A, (x.shape[0], 3, 3)))
    for fp in (ad, user):
        assert np.asarray(fp.status).tolist() == [
            tj.Status.OK, tj.Status.NONFINITE, tj.Status.NOT_CONVERGED
        ]  # fmt: skip
        assert int(fp.iterations[1]) == 1  # stopped at its failing evaluation
        np.testing.assert_allclose(np.asarray(fp.x[0]), _exact(0), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(ad.x[0]), np.asarray(user.x[0]))


def test_bad_options_are_refused_before_tracing():
    x0 = jnp.zeros((1, 3))
    with pytest.raises(ValueError, match="method must be one of"):
        solve_fixed_point(_affine, x0, method="broyden", tol=1e-6, max_iter=5)
    with pytest.raises(ValueError, match="batch > 1 is only for method='plain'"):
        solve_fixed_point(_affine, x0, method="anderson", tol=1e-6, max_iter=5, batch=2)
    with pytest.raises(ValueError, match="memory must be >= 1"):
        solve_fixed_point(_affine, x0, method="anderson", tol=1e-6, max_iter=5, memory=0)


VASO = tj.Link("pk.C", "circ.R_AR_SYS", "emax", {"Emax": -0.5, "EC50": 2.0})


def test_circulation_not_converged_patient_is_nan_others_intact():
    """A patient that runs out of beats gets NOT_CONVERGED and NaN beat metrics; a
    warm-started one in the same batch converges to the same steady state as alone."""
    m = circ.Circulation()
    p = {"HR": jnp.array([70.0, 70.0]), "R_AR_SYS": jnp.array([0.8, 1.1])}
    full = steady_state_cohort(m, p)  # cold start, both converge (Anderson)
    assert np.asarray(full["status"]).tolist() == [tj.Status.OK] * 2
    warm = {k: jnp.stack([v[0], m.init({"HR": 70.0})[k]]) for k, v in full["state"].items()}
    # patient 0 from its steady state, patient 1 from rest: 3 beats are too few for it
    short = steady_state_cohort(m, p, warm, max_beats=3)
    assert np.asarray(short["status"]).tolist() == [tj.Status.OK, tj.Status.NOT_CONVERGED]
    assert np.asarray(short["converged"]).tolist() == [True, False]
    assert int(short["beats"][1]) == 3 and int(short["beats"][0]) <= 2
    for k, v in short["metrics"].items():
        assert np.isnan(float(v[1])), k
        assert float(v[0]) == pytest.approx(float(full["metrics"][k][0]), rel=1e-3), k
    # the last iterate is kept as the state (a start for another try)
    assert np.all(np.isfinite([float(v[1]) for v in short["state"].values()]))
    # the plain beat-by-beat iteration: the same code and NaN metrics
    ss = circ.to_periodic_steady_state(
        m, p, tj.solvers.Ensemble("rk4", dt=1 / 400), y0=warm, max_beats=3
    )
    assert np.asarray(ss.status).tolist() == [tj.Status.OK, tj.Status.NOT_CONVERGED]
    assert np.asarray(ss.beats).tolist()[1] == 3
    assert np.isnan(float(ss.metrics["MAP"][1])) and np.all(np.isnan(ss.beat["p_LV"][1]))
    assert float(ss.metrics["MAP"][0]) == pytest.approx(float(full["metrics"]["MAP"][0]), rel=2e-3)
    assert tj.Status(int(ss.status[1])).message.startswith("the periodic steady state did not")
    # a quasi-static trial's steady states (QuasiStaticTwin._solve, chunks of 16 rows):
    # the same code per row, NaN metrics for that row only
    twin = QuasiStaticTwin(pk.one_compartment("first_order"), [VASO], max_beats=3)
    npy = lambda d: {k: np.asarray(v) for k, v in d.items()}  # noqa: E731
    _, mets, status = twin._solve(npy(p), npy(warm), tj.solvers.Ensemble("rk4", dt=1 / 400), None)
    assert status.tolist() == [tj.Status.OK, tj.Status.NOT_CONVERGED]
    assert np.isnan(mets["MAP"][1])
    assert mets["MAP"][0] == pytest.approx(float(full["metrics"]["MAP"][0]), rel=1e-3)


# ---------------------------------------------------------------- stop="step" and mask


def _affine_with_sink(x, active):
    """The three affine maps plus a 4th component that only accumulates (a cumulative
    state: x_3 + 1 + x_0, no fixed point), which ``mask`` leaves out."""
    gx, st = _affine(x[:, :3], active)
    return jnp.concatenate([gx, x[:, 3:] + 1.0 + x[:, :1]], -1), st


def test_step_stopping_with_mask_keeps_unmasked_components_and_newton_update():
    mask = np.array([True, True, True, False])
    x0 = jnp.asarray(np.arange(12.0).reshape(3, 4))
    fp = solve_fixed_point(
        _affine_with_sink, x0, method="newton", tol=1e-9, max_iter=30, stop="step", mask=mask
    )
    assert np.asarray(fp.status).tolist() == [
        tj.Status.OK, tj.Status.OK, tj.Status.NOT_CONVERGED
    ]  # fmt: skip
    np.testing.assert_array_equal(np.asarray(fp.x[:, 3]), np.asarray(x0[:, 3]))  # not iterated
    for i in (0, 1):  # Newton is exact on the affine block: step 1 lands, step 2 ~ 0
        np.testing.assert_allclose(np.asarray(fp.x[i, :3]), _exact(i), rtol=1e-12)
        assert int(fp.iterations[i]) == 2
        assert float(fp.residual[i]) <= 1e-9 * np.max(np.abs(_exact(i)))
    # the shift x + 1 has a singular Newton matrix: plain steps of size 1 until the end
    assert int(fp.iterations[2]) == 30 and float(fp.residual[2]) == pytest.approx(1.0)
    # fallback=False: the singular Newton matrix stops that patient as NONFINITE at once
    strict = solve_fixed_point(
        _affine_with_sink,
        x0,
        method="newton",
        tol=1e-9,
        max_iter=30,
        stop="step",
        mask=mask,
        fallback=False,
    )
    assert np.asarray(strict.status).tolist() == [
        tj.Status.OK, tj.Status.OK, tj.Status.NONFINITE
    ]  # fmt: skip
    assert int(strict.iterations[2]) == 1
    np.testing.assert_array_equal(np.asarray(strict.x[:2]), np.asarray(fp.x[:2]))
    # without the mask the sink makes J - I singular for everyone: nobody converges
    nomask = solve_fixed_point(
        _affine_with_sink, x0, method="newton", tol=1e-9, max_iter=5, stop="step"
    )
    assert not np.any(np.asarray(nomask.converged))


def test_step_stopping_is_relative_to_state_size_and_newton_is_quadratic():
    """G(x) = c + 0.5 sin(x) per component (a contraction, fixed point by bisection):
    stop="step" with scale None judges Newton's step relative to max |x|, so scaling
    the problem by 1e6 takes the same iterations, and the kept Newton update is
    accurate to about the square of the tolerance (started at c: from 0, Newton
    cycles on the second patient's x = 3 + 0.5 sin x)."""
    c = np.array([[1.0, -2.0], [0.3, 3.0]])

    def G(k):
        return lambda x, active: (
            k * (jnp.asarray(c) + 0.5 * jnp.sin(x / k)),
            jnp.zeros(x.shape[:1], jnp.int32),
        )

    exact = np.empty_like(c)
    for i, j in np.ndindex(c.shape):  # bisection on x - c - 0.5 sin x (increasing)
        lo, hi = c[i, j] - 1.0, c[i, j] + 1.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if mid - c[i, j] - 0.5 * np.sin(mid) < 0 else (lo, mid)
        exact[i, j] = 0.5 * (lo + hi)
    runs = [
        solve_fixed_point(
            G(k), k * jnp.asarray(c), method="newton", tol=1e-6, max_iter=20, stop="step"
        )
        for k in (1.0, 1e6)
    ]
    for k, fp in zip((1.0, 1e6), runs):
        assert np.asarray(fp.status).tolist() == [tj.Status.OK] * 2
        np.testing.assert_allclose(np.asarray(fp.x) / k, exact, rtol=1e-11, atol=0)
        assert np.all(np.asarray(fp.residual) <= 1e-6 * k * np.max(np.abs(exact), -1))
    assert np.asarray(runs[0].iterations).tolist() == np.asarray(runs[1].iterations).tolist()
    assert np.all(np.asarray(runs[0].iterations) <= 6)


def test_plain_iteration_stops_on_step_as_on_residual():
    """For x <- G(x) the update is the residual: with a scale both stops agree."""
    x0 = jnp.zeros((3, 3))
    one = jnp.ones((3, 3))
    a, b = (
        solve_fixed_point(_affine, x0, tol=1e-10, max_iter=400, scale=one, stop=s)
        for s in ("residual", "step")
    )
    for name in ("x", "iterations", "residual", "converged", "status"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)))


def test_bad_stop_and_mask_are_refused_before_tracing():
    x0 = jnp.zeros((1, 3))
    kw = dict(method="newton", tol=1e-6, max_iter=5)
    with pytest.raises(ValueError, match="stop must be one of"):
        solve_fixed_point(_affine, x0, stop="size", **kw)
    with pytest.raises(ValueError, match="length D = 3"):
        solve_fixed_point(_affine, x0, mask=np.array([True, False]), **kw)
    with pytest.raises(ValueError, match="boolean array"):
        solve_fixed_point(_affine, x0, mask=np.array([1, 1, 0]), **kw)
    with pytest.raises(ValueError, match="at least one component"):
        solve_fixed_point(_affine, x0, mask=np.zeros(3, bool), **kw)
    with pytest.raises(ValueError, match="concrete boolean array"):
        jax.jit(lambda m: solve_fixed_point(_affine, x0, mask=m, **kw))(jnp.ones(3, bool))


# ---------------------------------------------------------------- final


def _count_primitive(jaxpr, name):
    """Equations of primitive ``name`` in a jaxpr, its sub-jaxprs (loop and branch
    bodies) included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # a ClosedJaxpr's own
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == name
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    count += _count_primitive(sub, name)
    return count


@pytest.mark.parametrize("method,batch", [("plain", 1), ("plain", 2), ("anderson", 1)])
def test_final_evaluation_in_the_same_loop_and_call_of_the_map(method, batch):
    """``final``: each patient's map once more at its result (converged or not),
    its extra output kept; the iteration (iterates, counts, residuals, codes) is
    bitwise that without, and with ``batch=1`` the program holds the map once."""

    def G(x, active, final):
        gx, st = _affine(x, active)
        return gx, st, (2.0 * x + 1.0, jnp.where(final, 7, 0))

    x0 = jnp.zeros((3, 3))
    kw = dict(method=method, tol=1e-10, max_iter=400, scale=jnp.ones((3, 3)), batch=batch)
    base = jax.jit(lambda x: solve_fixed_point(_affine, x, **kw))(x0)
    zeros = (jnp.zeros((3, 3)), jnp.zeros((3,), jnp.int32))
    run = lambda x: solve_fixed_point(G, x, final=zeros, **kw)  # noqa: E731
    fin = jax.jit(run)(x0)
    # final=True: the same, the zeros' shapes found by tracing G
    shaped = jax.jit(lambda x: solve_fixed_point(G, x, final=True, **kw))(x0)
    for a, b in zip(jax.tree.leaves(shaped), jax.tree.leaves(fin)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for name in ("x", "iterations", "residual", "converged", "status"):
        np.testing.assert_array_equal(
            np.asarray(getattr(fin, name)), np.asarray(getattr(base, name))
        )
    assert np.asarray(fin.status).tolist()[2] == tj.Status.NOT_CONVERGED
    # the extra output is that of the evaluation at each patient's result x
    np.testing.assert_array_equal(np.asarray(fin.final[0]), 2.0 * np.asarray(fin.x) + 1.0)
    assert np.asarray(fin.final[1]).tolist() == [7, 7, 7]
    assert np.asarray(fin.final_status).tolist() == [0, 0, 0]
    assert base.final is None and base.final_status is None
    # G (one einsum) appears once in the program with batch=1 (Anderson adds its own)
    n_dot = _count_primitive(jax.make_jaxpr(run)(x0), "dot_general")
    n_base = _count_primitive(
        jax.make_jaxpr(lambda x: solve_fixed_point(_affine, x, **kw))(x0), "dot_general"
    )
    assert n_dot == n_base
    if method == "plain" and batch == 1:
        assert n_dot == 1
