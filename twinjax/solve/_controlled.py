"""Controlled runs: a controller hook that sets inputs at sample times.

A controlled run integrates a batch of patients between sample times
``k * sample_time`` (``k < n_samples``). At each sample a :class:`ControllerHook`
sees the state, the time, its own state and the parameters, and returns its new state,
the :class:`Inputs` it sets (infusion rates into named states, held until the next
sample, and boluses added to named states at once) and a record (any pytree of
``(N,)`` arrays) saved for that sample. This is the loop of a closed-loop therapy
(a sensor and a controller) or any sampled-data control of a model.

A sample interval may be split into equal sub-steps of length ``dt`` (the academic
diabetes simulator's 1-min patient step). An :class:`InputSchedule` then decides,
per sub-step, rates held over that sub-step (e.g. a meal eaten at a set rate) and,
through its :meth:`~InputSchedule.reset` hook, values that some states are set to
before the sub-step is integrated; the states it names in ``held`` keep their value
over each sub-step (their derivative is zero). What the schedule records at each
sub-step is summed over the sample's sub-steps.

Each sub-step is one call of the solver's ``integrate`` for the whole batch.
Status codes follow ``solve/_status.py``: a patient's code is the worst (largest)
over its sub-steps; a patient whose run succeeded but whose records are NaN or
infinite is ``NONFINITE``; a failed patient's records are NaN, the others' are left
as they are.

Nothing here knows an organ model: the glucose closed loop
(``models/glucose/_control.py``) is a hook (its CGM and controller), an input
schedule (its meals) and a reset (its gastric meal memory).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..ode._model import default_float
from ._batch import batch_params, stack_initial, unbatch
from ._engine import vector_field
from ._ensemble import Ensemble
from ._status import Status


class Inputs(eqx.Module):
    """What a controller sets at a sample.

    Attributes:
        rates: ``{state: (N,) or scalar}`` infusion rates (amount per time unit)
            into named states, held until the next sample.
        boluses: ``{state: (N,) or scalar}`` amounts added to named states at the
            sample, before integrating on.
    """

    rates: Mapping[str, Any] = eqx.field(default_factory=dict)
    boluses: Mapping[str, Any] = eqx.field(default_factory=dict)


class ControllerHook(eqx.Module):
    """A controller evaluated at every sample time of a controlled run.

    ``y``, the observed state, is ``{state: (N,)}``; ``t`` is ``(N,)``; ``p`` the
    patients' parameters ``{name: (N,)}``. Array fields of a hook may hold one value
    per patient.
    """

    @abc.abstractmethod
    def init(self, y: dict, t, p: dict):
        """The hook's state before the first sample (a pytree of arrays)."""

    @abc.abstractmethod
    def __call__(self, y: dict, t, state, p: dict) -> tuple[Any, Inputs, Any]:
        """``(state, inputs, record)``: the new state, the :class:`Inputs` held until
        the next sample, and what to save for this sample (a pytree of ``(N,)``
        arrays, or ``()``)."""


class InputSchedule(eqx.Module):
    """Inputs decided per sub-step of a sample interval, held over the sub-step.

    ``held``: states kept constant over each sub-step (derivative zero): states that
    :meth:`reset` sets and that the model should read as held, as the academic
    simulator holds its meal memory over its 1-min step.
    """

    held: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def init(self, y: dict, t, p: dict):
        """The schedule's state before the first sub-step."""

    @abc.abstractmethod
    def __call__(self, state, t0, t1, p: dict) -> tuple[Any, dict, Any]:
        """``(state, rates, record)`` for the sub-step ``[t0, t1)``: rates
        ``{state: (N,)}`` held over it (added to the controller's) and what to record
        (summed over the sample's sub-steps)."""

    def reset(self, state, y: dict, t, p: dict) -> tuple[Any, dict]:
        """``(state, {state name: (N,) value})``: states set at the start of a sub-step,
        after :meth:`__call__` (default: none)."""
        return state, {}


class ControlledRun(eqx.Module):
    """The outcome of :func:`run_controlled` (arrays ``(N, n_samples)`` per record).

    Attributes:
        records: the hook's records, one column per sample.
        sub_records: the schedule's records summed over each sample's sub-steps
            (``()`` without a schedule).
        y: ``(N, S)`` state at the end of the run.
        status: ``(N,)`` int32 :class:`~twinjax.Status` codes.
    """

    records: Any
    sub_records: Any
    y: jax.Array
    status: jax.Array


def _dense(names, parts, n, dtype):
    """``(n, S)`` rates from ``{state: (N,)}`` dicts (summed where two name one state),
    or None when nothing is infused."""
    unknown = sorted({k for d in parts for k in d} - set(names))
    if unknown:
        raise ValueError(f"inputs name unknown states {unknown}; the model has {list(names)}")
    if not any(parts):
        return None
    zero = jnp.zeros((n,), dtype)
    cols = []
    for s in names:
        vals = [jnp.broadcast_to(d[s], (n,)).astype(dtype) for d in parts if s in d]
        cols.append(sum(vals[1:], vals[0]) if vals else zero)
    return jnp.stack(cols, -1)


def _held_field(model, held):
    f = vector_field(model)
    if not held:
        return f
    unknown = sorted(set(held) - set(model.state_names))
    if unknown:
        raise ValueError(f"held names unknown states {unknown}; the model has {model.state_names}")
    mask = np.asarray([0.0 if s in held else 1.0 for s in model.state_names])

    def g(t, Y, args):  # the held states' derivatives are zero over each sub-step
        m = jnp.asarray(mask, Y.dtype).reshape((1,) * (Y.ndim - 1) + (-1,))
        return f(t, Y, args) * m

    return g


def _finalise(records, sub, status):
    """Records as ``(N, n_samples)``; NONFINITE for a run whose records are not finite;
    a failed patient's records NaN."""
    records = jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), records)
    sub = jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), sub)
    floats = [a for a in jax.tree.leaves((records, sub)) if jnp.issubdtype(a.dtype, jnp.floating)]
    if floats:
        finite = [jnp.all(jnp.isfinite(a).reshape(a.shape[0], -1), axis=1) for a in floats]
        bad = ~jnp.all(jnp.stack(finite), axis=0)
        status = jnp.where(bad & (status == Status.OK), Status.NONFINITE, status)
    status = status.astype(jnp.int32)

    def nan_failed(a):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            return a
        failed = (status != Status.OK).reshape((-1,) + (1,) * (a.ndim - 1))
        return jnp.where(failed, jnp.nan, a)

    return jax.tree.map(nan_failed, records), jax.tree.map(nan_failed, sub), status


@eqx.filter_jit
def run_controlled(model, solver, hook, p, cfg, schedule=None, y0=None) -> ControlledRun:
    """A controlled run of a batch (the compiled core; see the module notes).

    Arguments:
        model: the model.
        solver: an ``AbstractSolver``, called once per sub-step.
        hook: a :class:`ControllerHook`.
        p: the parameters as a batch, ``{name: (N,)}`` (:func:`~._batch.batch_params`).
        cfg: ``(n_samples, sample_time, dt)`` (Python numbers): samples at
            ``k * sample_time`` from 0, each integrated in sub-steps of ``dt`` (a
            divisor of ``sample_time``).
        schedule: an :class:`InputSchedule`, or None.
        y0: ``{state: (N,) or scalar}`` initial states (default ``model.init(p)``).
    """
    n_samples, sample_time, dt = cfg
    m_sub = int(round(sample_time / dt))
    n = next(iter(p.values())).shape[0]
    dtype = next(a for a in p.values() if jnp.issubdtype(a.dtype, jnp.floating)).dtype
    names = model.state_names
    index = {s: i for i, s in enumerate(names)}
    f = _held_field(model, schedule.held if schedule is not None else ())
    Y0 = stack_initial(model, p, y0, n, dtype)

    def observed(Y):
        return {s: Y[:, i] for s, i in index.items()}

    def sub_step(c, _):
        Y, t, s_state, status, held_rates = c
        t1 = t + dt
        parts, record = (held_rates,), ()
        if schedule is not None:
            s_state, s_rates, record = schedule(s_state, t, t1, p)
            s_state, values = schedule.reset(s_state, observed(Y), t, p)
            for s, v in values.items():
                Y = Y.at[:, index[s]].set(v)
            parts = (s_rates, held_rates)
        rates = _dense(names, parts, n, dtype)
        _, Y1, st = solver.integrate(f, t, t1, Y, None, (p, rates), model)
        return (Y1, t1, s_state, jnp.maximum(status, st), held_rates), record

    def sample_step(c, _):
        Y, t, s_state, status, h_state = c
        h_state, inputs, record = hook(observed(Y), t, h_state, p)
        for s, b in inputs.boluses.items():
            Y = Y.at[:, index[s]].add(jnp.broadcast_to(b, (n,)).astype(dtype))
        held_rates = {s: jnp.broadcast_to(r, (n,)).astype(dtype) for s, r in inputs.rates.items()}
        inner = (Y, t, s_state, status, held_rates)
        inner, sub = jax.lax.scan(sub_step, inner, None, length=m_sub)
        Y, t, s_state, status, _ = inner
        sub = jax.tree.map(lambda a: jnp.sum(a, 0), sub)
        return (Y, t, s_state, status, h_state), (record, sub)

    t0 = jnp.zeros((n,), dtype)
    y_obs = observed(Y0)
    s0 = schedule.init(y_obs, t0, p) if schedule is not None else ()
    c0 = (Y0, t0, s0, jnp.zeros((n,), jnp.int32), hook.init(y_obs, t0, p))
    c, (records, sub) = jax.lax.scan(sample_step, c0, None, length=n_samples)
    records, sub, status = _finalise(records, sub, c[3])
    return ControlledRun(records, sub, c[0], status)


def simulate_controlled(
    model,
    params: Mapping,
    hook: ControllerHook,
    *,
    n_samples: int,
    sample_time: float,
    dt: float | None = None,
    schedule: InputSchedule | None = None,
    solver=None,
    y0: Mapping | None = None,
    dtype=None,
    check: bool = True,
):
    """A controlled run from user parameters: the entry steps around :func:`run_controlled`.

    Arguments:
        model: the model.
        params: its parameters (scalars: one patient; ``(N,)``: a batch).
        hook: a :class:`ControllerHook`, evaluated at ``k * sample_time``,
            ``k < n_samples``.
        sample_time: the interval between samples (the model's time unit).
        dt: the sub-step (a divisor of ``sample_time``; default ``sample_time``).
        schedule: an :class:`InputSchedule` per sub-step, or None.
        solver: the integrator (default ``solvers.Ensemble()``).
        y0: initial states (default ``model.init``).
        dtype: floating dtype (default float64 when x64 is on).
        check: validate the parameters against their bounds.

    Returns:
        ``(times, run)``: the ``(n_samples,)`` sample times and a :class:`ControlledRun`
        (the patient axis dropped for one patient).

    Raises:
        ValueError: a non-positive ``n_samples``, ``sample_time`` or ``dt``, or
            ``sample_time`` not a multiple of ``dt``; parameters out of bounds.
    """
    dt = sample_time if dt is None else dt
    check_grid(n_samples, sample_time, dt)
    dtype = dtype or default_float()
    p, N, _ = batch_params(model, params, dtype, check)
    solver = Ensemble() if solver is None else solver
    cfg = (int(n_samples), float(sample_time), float(dt))
    run = run_controlled(model, solver, hook, p, cfg, schedule, y0)
    times = jnp.arange(n_samples, dtype=dtype) * sample_time
    return times, unbatch(run, N)


def check_grid(n_samples: int, sample_time: float, dt: float) -> None:
    """Raise a ``ValueError`` unless ``n_samples >= 1`` and ``sample_time`` is a positive
    multiple of a positive ``dt``."""
    if n_samples < 1:
        raise ValueError(f"n_samples {n_samples} must be at least 1")
    if not (sample_time > 0 and dt > 0):
        raise ValueError(f"sample_time {sample_time} and dt {dt} must be positive")
    m_sub = int(round(sample_time / dt))
    if abs(m_sub * dt - sample_time) > 1e-9 or m_sub < 1:
        raise ValueError(f"sample_time {sample_time} must be a positive multiple of dt {dt}")
