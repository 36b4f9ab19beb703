"""solvers.Ensemble("rodas5p"): the batched Rosenbrock method for stiff models.

Robertson's problem against the literature, TMDD with fast binding against diffrax's
Kvaerno5, order of convergence, forward-mode derivatives, per-patient failures,
float32, the automatic choice, and the batched LU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import pk
from twinjax.models.tmdd import TMDD
from twinjax.ode import Model, State
from twinjax.ode._param import positive
from twinjax.solve import _rosenbrock
from twinjax.solve._status import Status

ROSENBROCK = tj.solvers.Ensemble("rodas5p", rtol=1e-10, atol=1e-12)
TIMES = jnp.array([0.0, 0.25, 1.0, 6.0, 24.0, 72.0, 168.0])


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-300))


@pytest.fixture(scope="module")
def tmdd_rodas():
    """Rodas5P at rtol 1e-10 on the three TMDD patients (one compile, shared)."""
    model, params, reg = _tmdd_case()
    return tj.simulate(model, params, reg, TIMES, solver=ROSENBROCK)


def _tmdd_case():
    """Three patients with fast binding (KON R0 up to 1000/h vs elimination 0.003/h)."""
    params = {"KON": jnp.array([1.0, 10.0, 100.0]), "CL": jnp.array([0.01, 0.02, 0.005])}
    return TMDD(), params, tj.Regimen([tj.Dose(300.0, "central")])


class Robertson(Model):
    """Robertson's chemical kinetics (Hairer & Wanner II, sec. IV.1), rates as params."""

    time_unit = None

    @property
    def states(self):  # type: ignore[override]
        return tuple(State(s, "1") for s in ("y1", "y2", "y3"))

    @property
    def params(self):  # type: ignore[override]
        return (
            positive("K1", 0.04, "1"),
            positive("K2", 3e7, "1"),
            positive("K3", 1e4, "1"),
        )

    def rhs(self, t, y, p, u):
        r1 = p["K1"] * y["y1"]
        r2 = p["K2"] * y["y2"] ** 2
        r3 = p["K3"] * y["y2"] * y["y3"]
        return {"y1": -r1 + r3, "y2": r1 - r2 - r3, "y3": r2}

    def init(self, p):
        z = 0.0 * p["K1"]
        return {"y1": z + 1.0, "y2": z, "y3": z}

    def observe(self, t, y, p):
        return dict(y)


class VanDerPol(Model):
    """Van der Pol's oscillator ``x'' = MU (1 - x^2) x' - x`` (Hairer & Wanner II, IV.1):
    stiff for large ``MU``; for small ``MU`` a long horizon takes many short cycles."""

    @property
    def states(self):  # type: ignore[override]
        return (State("x", "1"), State("v", "1"))

    @property
    def params(self):  # type: ignore[override]
        return (positive("MU", 1000.0, "1"),)

    def rhs(self, t, y, p, u):
        return {"x": y["v"], "v": p["MU"] * (1 - y["x"] ** 2) * y["v"] - y["x"]}

    def init(self, p):
        return {"x": 2.0 + 0.0 * p["MU"], "v": 0.0 * p["MU"]}

    def observe(self, t, y, p):
        return {"x": y["x"]}


def test_robertson_against_the_literature():
    """Robertson to t = 1e11 (y2 falls to 1e-13): the reference solution of the IVP
    Test Set (Mazzia F, Magherini C, Test Set for Initial Value Problem Solvers,
    release 2.4, University of Bari, 2008, problem ROBER)."""
    ref_1e11 = np.array([0.2083340149701255e-07, 0.8333360770334713e-13, 0.9999999791665050])
    times = jnp.array([0.0, 40.0, 4e5, 1e11])
    res = tj.simulate(
        Robertson(),
        {},
        None,
        times,
        solver=tj.solvers.Ensemble("rodas5p", rtol=1e-10, atol=1e-20, max_steps=5000),
    )
    assert int(res.status) == 0
    y = np.stack([np.asarray(res.states[s]) for s in ("y1", "y2", "y3")], -1)
    np.testing.assert_allclose(y[-1], ref_1e11, rtol=1e-6)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-12)  # mass is conserved


@pytest.mark.slow
def test_robertson_agrees_with_kvaerno5():
    times = jnp.array([0.0, 1e-3, 0.4, 40.0, 4e3, 4e5])
    ref = tj.simulate(
        Robertson(),
        {},
        None,
        times,
        solver=tj.solvers.Diffrax("kvaerno5", rtol=1e-10, atol=1e-20),
    )
    got = tj.simulate(
        Robertson(), {}, None, times, solver=tj.solvers.Ensemble("rodas5p", rtol=1e-10, atol=1e-20)
    )
    for s in ("y1", "y2", "y3"):
        assert _rel(got.states[s], ref.states[s]) < 1e-8, s


@pytest.mark.slow
def test_tmdd_agrees_with_kvaerno5(tmdd_rodas):
    model, params, reg = _tmdd_case()
    ref = tj.simulate(
        model, params, reg, TIMES, solver=tj.solvers.Diffrax("kvaerno5", rtol=1e-10, atol=1e-12)
    )
    got = tmdd_rodas
    assert np.all(np.asarray(got.status) == 0)
    for k in ("C", "R", "RC"):
        assert _rel(got.outputs[k], ref.outputs[k]) < 1e-8, k


def test_explicit_needs_far_more_steps_on_fast_binding():
    """The same TMDD patient (KON R0 = 1000/h): Rodas5P finishes within 400 steps
    (per segment), DOPRI5 runs out of 10,000."""
    model, params, reg = _tmdd_case()
    p = {"KON": 100.0, "CL": 0.01}
    kw = dict(rtol=1e-6, atol=1e-9)
    stiff = tj.simulate(
        model, p, reg, TIMES, solver=tj.solvers.Ensemble("rodas5p", max_steps=400, **kw)
    )
    explicit = tj.simulate(
        model, p, reg, TIMES, solver=tj.solvers.Ensemble("dopri5", max_steps=10_000, **kw)
    )
    assert int(stiff.status) == Status.OK
    assert int(explicit.status) == Status.MAX_STEPS


def test_order_of_convergence():
    """Fixed steps on a non-autonomous linear and a nonlinear (logistic) equation:
    the global error falls as h^5 (and the df/dt terms count: without them the
    first equation would not reach order 5)."""
    solver = tj.solvers.Ensemble("rodas5p")
    w = 4.0

    def f(t, Y, args):  # state-major (S, N)
        return jnp.stack([-Y[0] + jnp.sin(w * t), Y[1] * (1 - Y[1])], 0)

    def exact(t):
        c = 1 + w / (1 + w**2)
        a = c * np.exp(-t) + (np.sin(w * t) - w * np.cos(w * t)) / (1 + w**2)
        y0 = 0.1
        return np.array([a, 1 / (1 + (1 / y0 - 1) * np.exp(-t))])

    @jax.jit
    def run(h, n):
        def body(_, c):
            t, y = c
            y1, _, _, _ = solver._step(f, t, y, f(t, y, None), h, None)
            return t + h, y1

        return jax.lax.fori_loop(0, n, body, (jnp.zeros(1), jnp.array([[1.0], [0.1]])))[1]

    errs = []
    steps = [8, 16, 32, 64]
    for n in steps:
        y = run(jnp.full(1, 2.0 / n), n)
        errs.append(np.abs(np.asarray(y[:, 0]) - exact(2.0)))
    errs = np.array(errs)  # (len(steps), 2)
    slopes = -np.diff(np.log(errs), axis=0) / np.log(2)
    np.testing.assert_allclose(slopes[-1], 5.0, atol=0.3)


@pytest.mark.slow
def test_forward_mode_derivatives_match_finite_differences():
    model, _, reg = _tmdd_case()

    def out(kon, cl):
        return tj.simulate(model, {"KON": kon, "CL": cl}, reg, TIMES, solver=ROSENBROCK)["Ctot"]

    x = (10.0, 0.02)
    for i in range(2):
        tangent = tuple(float(j == i) for j in range(2))
        _, jv = jax.jvp(out, x, tangent)
        eps = 1e-4 * x[i]
        up = tuple(v + eps * t for v, t in zip(x, tangent))
        dn = tuple(v - eps * t for v, t in zip(x, tangent))
        fd = (np.asarray(out(*up)) - np.asarray(out(*dn))) / (2 * eps)
        assert _rel(jv, fd) < 1e-5, i


def test_failing_patient_flagged_and_others_intact():
    """Van der Pol to t = 3000: MU = 1 runs ~480 short cycles and exhausts
    max_steps; the stiff MU = 1000 and 2000 patients finish, with the same results as
    when run without it."""
    model = VanDerPol()
    times = jnp.linspace(0.0, 3000.0, 7)
    solver = tj.solvers.Ensemble("rodas5p", rtol=1e-6, atol=1e-8, max_steps=1500)
    mixed = tj.simulate(model, {"MU": jnp.array([1000.0, 1.0, 2000.0])}, None, times, solver=solver)
    good = tj.simulate(model, {"MU": jnp.array([1000.0, 2000.0])}, None, times, solver=solver)
    st = np.asarray(mixed.status)
    assert st[1] == Status.MAX_STEPS and st[0] == 0 and st[2] == 0
    assert np.all(np.isnan(np.asarray(mixed["x"])[1]))
    np.testing.assert_allclose(
        np.asarray(mixed["x"])[[0, 2]], np.asarray(good["x"]), rtol=1e-12, atol=1e-12
    )
    assert np.all(np.abs(np.asarray(good["x"])) <= 2.1)  # on the limit cycle, |x| <= ~2


def test_float32_agrees_with_float64(tmdd_rodas):
    model, params, reg = _tmdd_case()
    p32 = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    got = tj.simulate(
        model,
        p32,
        reg,
        TIMES,
        solver=tj.solvers.Ensemble("rodas5p", rtol=1e-5, atol=1e-6),
        dtype=jnp.float32,
    )
    ref = tmdd_rodas
    assert got.outputs["C"].dtype == jnp.float32
    assert np.all(np.asarray(got.status) == 0)
    for k in ("C", "R", "RC"):
        assert _rel(got.outputs[k], ref.outputs[k]) < 1e-4, k


def test_automatic_choice_follows_the_stiff_flag():
    auto = tj.solvers.Ensemble()
    assert auto.method == "auto"
    assert auto.for_model(TMDD()).method == "rodas5p"
    assert auto.for_model(pk.one_compartment()).method == "dopri5"
    assert tj.solvers.Ensemble("tsit5").for_model(TMDD()).method == "tsit5"  # overridden
    with pytest.raises(ValueError, match="rodas5p"):
        tj.solvers.Ensemble("rodas4")


@pytest.mark.parametrize("S", [3, 4, 6])
def test_batched_lu_solves_with_pivoting(S):
    """The stage solve (unrolled SoA elimination for S <= UNROLL_MAX, batched LAPACK
    above) against NumPy, on matrices whose first pivot is 0 (pivoting needed)."""
    rng = np.random.default_rng(S)
    N = 5
    J = rng.normal(size=(N, S, S))
    J[:, 0, 0] = 1.0  # with hg = 1: M[0, 0] = 1 - J[0, 0] = 0
    hg = np.ones(N)
    cols = jnp.asarray(np.transpose(J, (2, 1, 0)))  # (S_j, S_i, N): column-major
    b = rng.normal(size=(S, N))
    W = _rosenbrock.StageMatrix(cols, jnp.asarray(hg))
    assert W.unrolled == (S <= _rosenbrock.UNROLL_MAX)
    x = np.asarray(W.solve(jnp.asarray(b)))
    M = np.eye(S)[None] - hg[:, None, None] * J
    want = np.linalg.solve(M, b.T[..., None])[..., 0].T
    np.testing.assert_allclose(x, want, rtol=1e-9, atol=1e-10)


@pytest.mark.slow
def test_many_states_use_the_batched_lapack_path():
    """An 8-state model (3-compartment PK with 3 transit compartments: S > UNROLL_MAX)
    through the whole loop against DOPRI5 at a tight tolerance."""
    model = pk.three_compartment("transit", n_transit=3)
    assert len(model.state_names) > _rosenbrock.UNROLL_MAX
    reg = tj.Regimen.repeat(100.0, "depot", every=12.0, n=3)
    times = jnp.linspace(0.0, 48.0, 49)
    p = {"CL": jnp.array([2.0, 5.0, 10.0])}
    ref = tj.simulate(
        model, p, reg, times, solver=tj.solvers.Ensemble("dopri5", rtol=1e-11, atol=1e-12)
    )
    got = tj.simulate(
        model, p, reg, times, solver=tj.solvers.Ensemble("rodas5p", rtol=1e-9, atol=1e-11)
    )
    assert np.all(np.asarray(got.status) == 0)
    assert _rel(got["C"], ref["C"]) < 1e-8
