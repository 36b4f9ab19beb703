"""Model-generic checks run over the catalogue of every shipped model.

The checks are collected by ``tests/test_catalogue*.py``, each over a part of the
catalogue (``catalogue.py``), so that the parts run in parallel processes.

Nearly all of their time is XLA compilation (one program per model, solver, dtype and
batch size), so the checks share programs wherever that changes nothing they assert:

- The single-patient float64 solves share one compiled program: the tight reference
  (``tight(e)``) of the float32 check, the per-patient references of the Ensemble
  check, the finite differences of the gradient check, and the single runs of the
  batch check (``default_single()``). Their ``solvers.Diffrax`` tolerances are given
  as arrays, which ``simulate`` traces as values rather than compiling them in, so
  one program serves every tolerance (the numbers were bitwise those of the same
  tolerances as Python floats, checked on ``two_compartment``, default and tight).
- The gradient check runs in forward mode (``jax.jacfwd``: one program) except for the
  entries in ``catalogue.REVERSE_MODE`` (``jax.grad``: two programs, about twice the
  compile time); see ``test_gradients_match_finite_differences``.

This module replaces ``generic_checks.py`` (the same checks; only the gradient check's
mode changed).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from catalogue import REVERSE_MODE

import twinjax as tj
from twinjax.solve._simulate import simulate_core

__all__ = [
    "test_parameter_table",
    "test_unconstrained_round_trip",
    "test_out_of_bounds_parameter_raises_before_compiling",
    "test_float32_and_float64_agree",
    "test_batch_equals_single_and_no_recompile",
    "test_ensemble_agrees_with_diffrax",
    "test_gradients_match_finite_differences",
]


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-300))


def _traced_tolerances(rtol, atol, adjoint="checkpoint"):
    """``solvers.Diffrax`` with its tolerances as arrays: values of the compiled program,
    not constants in it (every single-patient float64 solve of an entry shares it)."""
    return tj.solvers.Diffrax(
        rtol=jnp.asarray(rtol, jnp.float64),
        atol=jnp.asarray(atol, jnp.float64),
        adjoint=adjoint,
    )


def tight(e):
    return _traced_tolerances(e.tight_rtol, e.tight_atol)


def default_single():
    """The default solver (``solvers.Diffrax()``: method, tolerances and all) for the
    single runs of the batch check, its tolerances as arrays (see ``tight``)."""
    d = tj.solvers.Diffrax()
    return _traced_tolerances(d.rtol, d.atol)


def maybe_skip(e, name):
    if name in e.skip:
        pytest.skip(e.skip[name])


def test_parameter_table(e):
    maybe_skip(e, "test_parameter_table")
    m = e.model
    assert m.params, "a model has parameters"
    for q in m.params:
        assert q.unit and q.lower <= q.value <= q.upper
        assert q.source or q.name.startswith("link") or "." in q.name or q.doc
    for s in m.states:
        assert s.unit
    table = m.param_table()
    assert list(table.index) == list(m.param_names)
    assert set(m.output_names) >= {e.output}


def test_unconstrained_round_trip(e):
    maybe_skip(e, "test_unconstrained_round_trip")
    p, _ = e.model.complete(e.params)
    z = e.model.pack(p)
    back = e.model.unpack(z)
    for k in e.model.param_names:
        np.testing.assert_allclose(back[k], p[k], rtol=1e-12, atol=1e-12)


def test_out_of_bounds_parameter_raises_before_compiling(e):
    maybe_skip(e, "test_out_of_bounds_parameter_raises_before_compiling")
    q = next(q for q in e.model.params if q.lower == 0.0 and q.transform == "log")
    before = eqx.debug.get_num_traces(simulate_core)
    with pytest.raises(ValueError, match=rf"{q.name}.*bounds"):
        tj.simulate(e.model, {**e.params, q.name: -1.0}, e.regimen(), e.times)
    assert eqx.debug.get_num_traces(simulate_core) == before


def test_float32_and_float64_agree(e):
    maybe_skip(e, "test_float32_and_float64_agree")
    r64 = tj.simulate(e.model, e.params, e.regimen(), e.times, solver=tight(e))
    r32 = tj.simulate(
        e.model,
        e.params,
        e.regimen(),
        e.times,
        dtype=jnp.float32,
        solver=tj.solvers.Diffrax(rtol=1e-6, atol=1e-6),
    )
    assert int(r64.status) == 0 and int(r32.status) == 0
    assert r32.outputs[e.output].dtype == jnp.float32
    a, b = np.asarray(r32.outputs[e.output]), np.asarray(r64.outputs[e.output])
    scale = np.max(np.abs(b))
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale)


def test_batch_equals_single_and_no_recompile(e):
    maybe_skip(e, "test_batch_equals_single_and_no_recompile")
    names = [q.name for q in e.model.params if q.transform == "log"][:2]
    base, _ = e.model.complete(e.params)
    scales = jnp.array([1.0, 0.8, 1.25])
    batch = {k: base[k] * scales for k in names}
    pb = {**e.params, **batch}
    rb = tj.simulate(e.model, pb, e.regimen(), e.times)  # the default solver
    for i in range(3):
        ri = tj.simulate(
            e.model,
            {**e.params, **{k: v[i] for k, v in batch.items()}},
            e.regimen(),
            e.times,
            solver=default_single(),
        )
        np.testing.assert_allclose(
            rb.outputs[e.output][i], ri.outputs[e.output], rtol=1e-9, atol=1e-12
        )
    n0 = eqx.debug.get_num_traces(simulate_core)
    tj.simulate(
        e.model, {**e.params, **{k: v * 1.1 for k, v in batch.items()}}, e.regimen(), e.times
    )
    assert eqx.debug.get_num_traces(simulate_core) == n0, (
        "a second batch of the same size must not recompile"
    )


def test_ensemble_agrees_with_diffrax(e):
    maybe_skip(e, "test_ensemble_agrees_with_diffrax")
    names = [q.name for q in e.model.params if q.transform == "log"][:2]
    base, _ = e.model.complete(e.params)
    batch = {**e.params, **{k: base[k] * jnp.array([1.0, 0.7, 1.4]) for k in names}}
    # the reference: each patient alone with the entry's tight solver (the program of
    # the float64 check and of the finite differences)
    singles = [
        tj.simulate(
            e.model,
            {k: (v[i] if k in names else v) for k, v in batch.items()},
            e.regimen(),
            e.times,
            solver=tight(e),
        )
        for i in range(3)
    ]
    ref_outputs = {
        k: np.stack([np.asarray(r.outputs[k]) for r in singles]) for k in singles[0].outputs
    }
    for method in ("dopri5", "tsit5"):
        got = tj.simulate(
            e.model,
            batch,
            e.regimen(),
            e.times,
            solver=tj.solvers.Ensemble(method, rtol=1e-9, atol=1e-11),
        )
        assert np.all(np.asarray(got.status) == 0)
        for k in ref_outputs:
            assert _rel(got.outputs[k], ref_outputs[k]) < 1e-6, (method, k)
    if e.rk4_dt is None:
        return
    rk4 = tj.simulate(
        e.model, batch, e.regimen(), e.times, solver=tj.solvers.Ensemble("rk4", dt=e.rk4_dt)
    )
    assert _rel(rk4.outputs[e.output], ref_outputs[e.output]) < 1e-6


def test_gradients_match_finite_differences(e):
    """d(sum of output)/d(every parameter, dose amount, dose time) vs central FD.

    Entries in ``catalogue.REVERSE_MODE`` (one cheap entry per test file) take the
    gradient in reverse mode (``jax.grad`` through diffrax's checkpointed adjoint, the
    default ``solvers.Diffrax``), the others in forward mode (``jax.jacfwd``, the same
    tight solve with ``adjoint="forward"``): the same derivatives, every one of them
    checked, but forward mode compiles one program (primal and tangents together)
    where reverse mode compiles two (forward with residuals, then the transpose through
    the checkpointed loop), about half the compile time. Reverse mode through the
    engine and diffrax is also checked in tests/test_circulation.py,
    tests/test_dose_modifiers.py and tests/test_time_varying.py.
    """
    maybe_skip(e, "test_gradients_match_finite_differences")
    p0, _ = e.model.complete(e.params)
    p0 = {k: float(v) for k, v in p0.items()}
    dosing = e.dose_cmt is not None
    solver = tight(e)  # the finite differences run the shared tight program

    def objective(p, amt, time, solver=solver):
        reg = e.regimen(amt, time) if dosing else None
        r = tj.simulate(e.model, p, reg, e.times, solver=solver)
        return jnp.sum(r.outputs[e.output])

    args = (p0, e.dose_amt, e.dose_time)
    if e.id in REVERSE_MODE:
        g_p, g_a, g_t = jax.grad(objective, argnums=(0, 1, 2))(*args)
    else:
        forward = _traced_tolerances(e.tight_rtol, e.tight_atol, adjoint="forward")
        g_p, g_a, g_t = jax.jacfwd(
            lambda p, amt, time: objective(p, amt, time, forward), argnums=(0, 1, 2)
        )(*args)

    def fd(fn, x, lower=-np.inf):
        h = 1e-5 * max(abs(x), 1e-2)
        if x - h < lower:  # second-order one-sided difference at a bound
            return (-3 * fn(x) + 4 * fn(x + h) - fn(x + 2 * h)) / (2 * h)
        return (fn(x + h) - fn(x - h)) / (2 * h)

    scale = max(abs(float(v)) for v in jax.tree.leaves(g_p)) + 1e-30
    for k in e.grad_params if e.grad_params is not None else p0:
        lower = e.model.param(k).lower
        want = fd(lambda x: objective({**p0, k: x}, e.dose_amt, e.dose_time), p0[k], lower)
        got = float(g_p[k])
        assert got == pytest.approx(float(want), rel=1e-5, abs=1e-7 * scale * max(1, abs(p0[k]))), k
    if dosing:
        want_a = fd(lambda x: objective(p0, x, e.dose_time), e.dose_amt)
        want_t = fd(lambda x: objective(p0, e.dose_amt, x), e.dose_time)
        assert float(g_a) == pytest.approx(float(want_a), rel=1e-5, abs=1e-9)
        assert float(g_t) == pytest.approx(float(want_t), rel=1e-5, abs=1e-9)
