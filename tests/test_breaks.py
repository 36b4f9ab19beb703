"""Discontinuity times (``simulate(..., breaks=)``, issue #15): a right-hand side that
switches at a known time is integrated exactly on each side, with every solver, both
conventions of writing the switch, per-patient times, blocks and derivatives."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import pk
from twinjax.ode import Model, State
from twinjax.ode._param import real

TS = jnp.linspace(0.0, 10.0, 21)


class Switch(Model):
    """``dy/dt = 1`` before ``T``, ``-1`` after (a forcing that reverses at a known
    time): ``y = t`` up to ``T``, then ``2 T - t``. ``closed``: the switch written
    ``t <= T`` (else ``t < T``)."""

    closed: bool = eqx.field(static=True, default=False)

    @property
    def states(self):  # type: ignore[override]
        return (State("y", "1"),)

    @property
    def params(self):  # type: ignore[override]
        return (real("T", 5.0, "h", lower=0.0, upper=100.0),)

    def rhs(self, t, y, p, u):
        before = (t <= p["T"]) if self.closed else (t < p["T"])
        return {"y": jnp.where(before, 1.0, -1.0) + 0.0 * y["y"]}

    def init(self, p):
        return {"y": jnp.zeros_like(p["T"])}

    def observe(self, t, y, p):
        return {"Y": y["y"]}


def exact(T, ts=TS):
    T = np.asarray(T, float)[..., None]
    t = np.asarray(ts)
    return np.where(t < T, t, 2 * T - t)


SOLVERS = {
    "diffrax": lambda: tj.solvers.Diffrax(),
    "dopri5": lambda: tj.solvers.Ensemble("dopri5"),
    "rodas5p": lambda: tj.solvers.Ensemble("rodas5p"),
    "rk4": lambda: tj.solvers.Ensemble("rk4", dt=0.3),
}


@pytest.mark.parametrize("closed", [False, True])
@pytest.mark.parametrize("name", list(SOLVERS))
def test_a_switch_is_integrated_exactly_on_both_sides(name, closed):
    model, sol = Switch(closed=closed), SOLVERS[name]()
    plain = tj.simulate(model, {"T": 5.0}, times=TS, solver=sol)
    broken = tj.simulate(model, {"T": 5.0}, times=TS, solver=sol, breaks=[5.0])
    assert int(broken.status) == 0 and int(plain.status) == 0
    # without the break a step straddles the switch (the fixed step is off by 0.1,
    # the adaptive ones by 2e-5 to 6e-4); with it each side is a constant field,
    # which every method integrates exactly
    assert np.max(np.abs(np.asarray(plain["Y"]) - exact(5.0))) > 1e-5
    np.testing.assert_allclose(np.asarray(broken["Y"]), exact(5.0), rtol=0, atol=1e-12)


def test_breaks_per_patient_and_in_blocks():
    T = jnp.array([2.0, 5.0, 7.5, 0.0, 9.99])
    model = Switch()
    ref = exact(T)
    for sol in (tj.solvers.Ensemble("dopri5"), tj.solvers.Ensemble("dopri5", block=2)):
        r = tj.simulate(model, {"T": T}, times=TS, solver=sol, breaks=T[:, None])
        np.testing.assert_allclose(np.asarray(r["Y"]), ref, rtol=0, atol=1e-12)
    # (J,) shared by every patient, with blocks, two breaks per patient
    r = tj.simulate(
        model,
        {"T": jnp.full(5, 5.0)},
        times=TS,
        solver=tj.solvers.Ensemble("dopri5", block=2),
        breaks=[5.0, 20.0],
    )
    np.testing.assert_allclose(np.asarray(r["Y"]), np.broadcast_to(exact(5.0), (5, 21)), atol=1e-12)


def test_float32():
    r = tj.simulate(
        Switch(),
        {"T": 5.0},
        times=TS,
        solver=tj.solvers.Ensemble("dopri5"),
        breaks=[5.0],
        dtype=jnp.float32,
    )
    assert r["Y"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(r["Y"]), exact(5.0), rtol=0, atol=2e-6)


def _y_end(T, sol):
    r = tj.simulate(
        Switch(), {"T": T}, times=jnp.array([0.0, 10.0]), solver=sol, breaks=T[None], check=False
    )
    return r["Y"][-1]


@pytest.mark.parametrize("name", ["diffrax", "dopri5", "rk4"])
def test_derivative_with_respect_to_a_parameter_dependent_break(name):
    """``y(10) = 2 T - 10``: the derivative 2 flows through the segment ends. With
    ``dopri5`` the carried step covers the whole second segment, so the step landed
    on the end equals the rest exactly: a tie that once split the derivative in half
    (1.75 instead of 2)."""
    sol = SOLVERS[name]()
    d = jax.grad if name == "diffrax" else jax.jacfwd
    g = float(d(_y_end)(jnp.asarray(5.0), sol))
    h = 1e-4
    fd = float(_y_end(jnp.asarray(5.0 + h), sol) - _y_end(jnp.asarray(5.0 - h), sol)) / (2 * h)
    assert g == pytest.approx(2.0, abs=1e-9)
    assert fd == pytest.approx(2.0, abs=1e-6)


def test_breaks_on_a_smooth_model_change_nothing_but_the_steps():
    """A PK profile with breaks (one at a dose, one after the last save) matches the
    profile without them to the solver's tolerance; the breaks are not doses."""
    model = pk.one_compartment("first_order")
    reg = tj.Regimen([tj.Dose(100.0, "depot", time=0.0), tj.Dose(100.0, "depot", time=12.0)])
    ts = jnp.linspace(0.0, 24.0, 49)
    sol = tj.solvers.Ensemble("dopri5", rtol=1e-10, atol=1e-12)
    p = {"CL": 4.0, "V": 30.0, "KA": 1.2}
    a = tj.simulate(model, p, reg, ts, solver=sol)
    b = tj.simulate(model, p, reg, ts, solver=sol, breaks=[3.3, 12.0, 30.0])
    np.testing.assert_allclose(np.asarray(b["C"]), np.asarray(a["C"]), rtol=1e-8, atol=1e-12)
    assert not np.array_equal(np.asarray(b["C"]), np.asarray(a["C"]))  # the steps differ


@pytest.mark.parametrize(
    "breaks, message",
    [
        ([-1.0], r"breaks\[0\] is -1.0; breaks must be finite and >= 0"),
        ([1.0, float("nan")], r"breaks\[1\] is nan"),
        ([[1.0], [2.0]], r"breaks has shape \(2, 1\); expected \(J,\) .* \(3, J\)"),
        ([[1.0], [2.0], [float("inf")]], r"breaks\[2, 0\] is inf"),
        ("soon", "breaks must be numbers"),
    ],
)
def test_bad_breaks_are_refused_before_simulation(breaks, message):
    with pytest.raises(ValueError, match=message):
        tj.simulate(Switch(), {"T": jnp.array([1.0, 2.0, 3.0])}, times=TS, breaks=breaks)
