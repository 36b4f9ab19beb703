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

Each sub-step is one call of the solver's ``integrate`` for the whole batch. Times
are computed from integer counters, ``k * sample_time + j * dt`` for sub-step ``j``
of sample ``k`` (no drift from summing ``dt``).
Status codes follow ``solve/_status.py``: a patient's code is the worst (largest)
over its sub-steps; a patient whose run succeeded but whose records are NaN or
infinite is ``NONFINITE``; a failed patient's records and final state are NaN, the
others' are left as they are.

What a hook or schedule returns is checked when the run is traced, before anything is
compiled: inputs and resets must name states of the model, and records must be
pytrees of arrays with the patient axis first; a hook or schedule may refuse a run
grid it was not built for (:meth:`ControllerHook.check`).

Nothing here knows an organ model: the glucose closed loop
(``models/glucose/_control.py``) is a hook (its CGM and controller), an input
schedule (its meals) and a reset (its gastric meal memory).
"""

from __future__ import annotations

import abc
import numbers
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

    def check(self, n: int, n_samples: int, sample_time: float, dt: float) -> None:
        """Raise a ``ValueError`` if the hook cannot serve a run of ``n`` patients and
        ``n_samples`` samples every ``sample_time`` in sub-steps of ``dt`` (called
        before compiling; default: any run)."""

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

    def check(self, n: int, n_samples: int, sample_time: float, dt: float) -> None:
        """As :meth:`ControllerHook.check` (default: any run)."""

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
        y: ``(N, S)`` state at the end of the run (NaN for a failed patient).
        status: ``(N,)`` int32 :class:`~twinjax.Status` codes.
    """

    records: Any
    sub_records: Any
    y: jax.Array
    status: jax.Array


def _per_patient(what, values, names, n):
    """Refuse ``{state: value}`` naming a state the model lacks or a value that is not a
    scalar or ``(n,)`` (at trace time, before compiling)."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{what} must be a dict {{state: value}}, got {type(values).__name__}")
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{what} name unknown states {unknown}; the model has {list(names)}")
    for s, v in values.items():
        shape = jnp.shape(v)
        if shape not in ((), (1,), (n,)):
            raise ValueError(f"{what}[{s!r}] has shape {shape}; allowed: a scalar or ({n},)")


def _check_record(what, record, n):
    """Refuse a record whose arrays do not have the ``n`` patients on their first axis."""
    for path, a in jax.tree_util.tree_leaves_with_path(record):
        shape = jnp.shape(a)
        if len(shape) < 1 or shape[0] != n:
            where = jax.tree_util.keystr(path) or "the record"
            raise ValueError(
                f"{what} {where} has shape {shape}; a record must be a pytree of arrays "
                f"with the {n} patients first, (N,) or (N, ...)"
            )


def _dense(names, parts, n, dtype):
    """``(n, S)`` rates from ``{state: (N,)}`` dicts (summed where two name one state),
    or None when nothing is infused."""
    for d in parts:
        _per_patient("inputs' rates", d, names, n)
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


def _finalise(records, sub, y, status):
    """Records as ``(N, n_samples)``; NONFINITE for a run whose records are not finite;
    a failed patient's records and final state NaN."""
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

    nan = jax.tree.map(nan_failed, (records, sub, y))
    return nan + (status,)


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
    check_grid(n_samples, sample_time, dt)
    m_sub = int(round(sample_time / dt))
    n = next(iter(p.values())).shape[0]
    dtype = next(a for a in p.values() if jnp.issubdtype(a.dtype, jnp.floating)).dtype
    names = model.state_names
    index = {s: i for i, s in enumerate(names)}
    hook.check(n, n_samples, sample_time, dt)
    if schedule is not None:
        schedule.check(n, n_samples, sample_time, dt)
    f = _held_field(model, schedule.held if schedule is not None else ())
    check_y0(model, y0, n)
    Y0 = stack_initial(model, p, y0, n, dtype)

    def observed(Y):
        return {s: Y[:, i] for s, i in index.items()}

    def time(k, j):  # sub-step j of sample k, from the counters (no summed drift)
        return jnp.full((n,), k * sample_time + j * dt, dtype)

    def sub_step(c, j):
        Y, k, s_state, status, held_rates = c
        # the last sub-step ends exactly where the next sample starts
        t, t1 = time(k, j), time(k + (j + 1) // m_sub, (j + 1) % m_sub)
        parts, record = (held_rates,), ()
        if schedule is not None:
            s_state, s_rates, record = schedule(s_state, t, t1, p)
            _check_record("the schedule's record", record, n)
            s_state, values = schedule.reset(s_state, observed(Y), t, p)
            _per_patient("the schedule's reset", values, names, n)
            for s, v in values.items():
                Y = Y.at[:, index[s]].set(jnp.broadcast_to(v, (n,)).astype(dtype))
            parts = (s_rates, held_rates)
        rates = _dense(names, parts, n, dtype)
        _, Y1, st = solver.integrate(f, t, t1, Y, None, (p, rates), model)
        return (Y1, k, s_state, jnp.maximum(status, st), held_rates), record

    def sample_step(c, k):
        Y, s_state, status, h_state = c
        h_state, inputs, record = hook(observed(Y), time(k, 0), h_state, p)
        if not isinstance(inputs, Inputs):
            raise ValueError(f"a hook returns (state, Inputs, record); got {type(inputs).__name__}")
        _per_patient("inputs' boluses", inputs.boluses, names, n)
        _per_patient("inputs' rates", inputs.rates, names, n)
        _check_record("the hook's record", record, n)
        for s, b in inputs.boluses.items():
            Y = Y.at[:, index[s]].add(jnp.broadcast_to(b, (n,)).astype(dtype))
        held_rates = {s: jnp.broadcast_to(r, (n,)).astype(dtype) for s, r in inputs.rates.items()}
        inner = (Y, k, s_state, status, held_rates)
        inner, sub = jax.lax.scan(sub_step, inner, jnp.arange(m_sub))
        Y, _, s_state, status, _ = inner
        sub = jax.tree.map(lambda a: jnp.sum(a, 0), sub)
        return (Y, s_state, status, h_state), (record, sub)

    t0 = time(0, 0)
    y_obs = observed(Y0)
    s0 = schedule.init(y_obs, t0, p) if schedule is not None else ()
    c0 = (Y0, s0, jnp.zeros((n,), jnp.int32), hook.init(y_obs, t0, p))
    c, (records, sub) = jax.lax.scan(sample_step, c0, jnp.arange(n_samples))
    records, sub, y, status = _finalise(records, sub, c[0], c[2])
    return ControlledRun(records, sub, y, status)


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
        ValueError: ``n_samples`` not a positive integer, a non-positive
            ``sample_time`` or ``dt``, or ``sample_time`` not a multiple of ``dt``;
            parameters out of bounds; ``y0`` not naming exactly the model's states;
            a grid the hook or schedule refuses (their ``check``); inputs, resets or
            held states naming unknown states; records without the patient axis first
            (all before compiling).
    """
    dt = sample_time if dt is None else dt
    check_grid(n_samples, sample_time, dt)
    dtype = dtype or default_float()
    p, N, nb = batch_params(model, params, dtype, check)
    check_y0(model, y0, nb)
    solver = Ensemble() if solver is None else solver
    cfg = (int(n_samples), float(sample_time), float(dt))
    run = run_controlled(model, solver, hook, p, cfg, schedule, y0)
    times = jnp.arange(n_samples, dtype=dtype) * sample_time
    return times, unbatch(run, N)


def check_grid(n_samples: int, sample_time: float, dt: float) -> None:
    """Raise a ``ValueError`` unless ``n_samples`` is an integer ``>= 1`` and
    ``sample_time`` is a positive multiple of a positive ``dt``."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral):
        raise ValueError(f"n_samples {n_samples!r} must be an integer (the number of samples)")
    if n_samples < 1:
        raise ValueError(f"n_samples {n_samples} must be at least 1")
    if not (sample_time > 0 and dt > 0):
        raise ValueError(f"sample_time {sample_time} and dt {dt} must be positive")
    m_sub = int(round(sample_time / dt))
    if abs(m_sub * dt - sample_time) > 1e-9 or m_sub < 1:
        raise ValueError(f"sample_time {sample_time} must be a positive multiple of dt {dt}")


def check_y0(model, y0: Mapping | None, n: int) -> None:
    """Raise a ``ValueError`` unless ``y0`` (if given) names every state of the model,
    no other, each a scalar or ``(n,)``."""
    if y0 is None:
        return
    names = list(model.state_names)
    unknown = sorted(set(y0) - set(names))
    missing = [s for s in names if s not in y0]
    if unknown or missing:
        raise ValueError(
            f"y0: unknown states {unknown}, missing states {missing}; "
            f"y0 needs one value for each of the model's states {names}"
        )
    for s in names:
        shape = np.shape(y0[s])
        if shape not in ((), (1,), (n,)):
            raise ValueError(f"y0[{s!r}] has shape {shape}; allowed: a scalar or ({n},)")
