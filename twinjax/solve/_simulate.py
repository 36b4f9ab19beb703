"""``simulate``: one model, one regimen (or one per patient), a batch of parameters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..dosing._regimen import EventTable, Regimen, compile_regimens
from ..ode._model import Model, default_float
from ..ode._model import is_concrete as _concrete
from ..ode._piecewise import initial_values, schedule, split_params
from ._base import AbstractSolver
from ._batch import batch_params, broadcast_batch, n_patients, patient_rows, unbatch
from ._diffrax import Diffrax
from ._engine import run
from ._result import Result
from ._status import Status


def check_times(times, dtype) -> jax.Array:
    ts = jnp.asarray(times, dtype)
    if ts.ndim not in (1, 2) or ts.shape[-1] == 0:
        raise ValueError(f"times must be a non-empty (T,) or (N, T) array, got shape {ts.shape}")
    if _concrete(ts):
        a = np.asarray(ts)
        if not np.all(np.isfinite(a)):
            raise ValueError("times must be finite")
        if np.any(a < 0):
            raise ValueError(f"times must be >= 0 (the simulation starts at 0); min is {a.min()}")
        if np.any(np.diff(a, axis=-1) < 0):
            i = int(np.argwhere(np.diff(a, axis=-1) < 0)[0][-1])
            raise ValueError(f"times must be non-decreasing; times[{i + 1}] < times[{i}]")
    return ts


def piecewise_params(model, params, check):
    """Split ``Piecewise`` values off the parameters: ``(params with their values at
    time 0, {name: Piecewise})``, after validating them."""
    params, pw = split_params(params)
    for k, v in pw.items():
        if k not in model.param_names:
            continue  # model.complete names it
        v.validate(k)
        if check:
            model.check_bounds({k: v.values})
    ns = {v.n for v in pw.values()} - {None}
    if len(ns) > 1:
        raise ValueError(
            f"Piecewise parameters have different numbers of patients: "
            f"{ {k: v.n for k, v in pw.items()} }"
        )
    return {**params, **initial_values(pw)}, pw


def prepare(model, params, regimen, times, dtype, check=True):
    """Validate inputs and build the (N,)-batched arrays the engine runs on.

    Returns ``(p, ev, ts, ts2, N, sched)``: ``sched`` is the schedule of the parameters
    given as :class:`~twinjax.Piecewise` (None if there are none); ``p`` holds their
    values at time 0.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a twinjax Model, got {type(model).__name__}")
    params, pw = piecewise_params(model, params, check)
    p, n, _ = batch_params(model, params, dtype, check)
    ts = check_times(times, dtype)
    if isinstance(regimen, EventTable):
        ev = regimen
        n_reg = ev.time.shape[0] if ev.time.ndim == 2 else None
    elif regimen is None or isinstance(regimen, Regimen):
        ev = compile_regimens([regimen], model, dtype=dtype)
        n_reg = None
    elif isinstance(regimen, Sequence):
        ev = compile_regimens(list(regimen), model, dtype=dtype)
        n_reg = len(regimen)
    else:
        raise TypeError(
            f"regimen must be a Regimen, a list of Regimens (one per patient) or None; got "
            f"{type(regimen).__name__}"
        )
    if ev.time.ndim == 1:
        ev = jax.tree.map(lambda a: a[None], ev)
    n_ts = ts.shape[0] if ts.ndim == 2 else None
    N, nb = n_patients(params=n, regimens=n_reg, times=n_ts)
    p, ev = broadcast_batch((p, ev), nb)
    return p, ev, ts, patient_rows(ts, nb), N, schedule(pw, nb, dtype)


def check_breaks(breaks, n: int, dtype):
    """Validated discontinuity times: ``(1, J)`` shared or ``(n, J)`` per patient, or
    None (none given). Raises ``ValueError`` naming the first bad entry."""
    if breaks is None:
        return None
    try:
        b = jnp.asarray(breaks, dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"breaks must be numbers, got {breaks!r}") from e
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[0] not in (1, n):
        raise ValueError(
            f"breaks has shape {tuple(np.shape(breaks))}; expected (J,) for every patient or "
            f"({n}, J) for the {n} patient(s) given by the parameters, regimens and times"
        )
    if b.shape[-1] == 0:
        return None
    if _concrete(b):
        a = np.asarray(b)
        bad = ~np.isfinite(a) | (a < 0)
        if bad.any():
            i = tuple(int(x) for x in np.argwhere(bad)[0])
            where = f"breaks[{i[1]}]" if a.shape[0] == 1 else f"breaks[{i[0]}, {i[1]}]"
            raise ValueError(f"{where} is {a[i]}; breaks must be finite and >= 0")
    return b


def _pre_dose(pre_dose, ts):
    """Validated pre-dose save flags (a bool array shaped like ``ts``) or None."""
    if pre_dose is None:
        return None
    pre = np.asarray(pre_dose)
    if pre.dtype != bool:
        raise ValueError(f"pre_dose must be booleans, got dtype {pre.dtype}")
    if pre.shape not in (ts.shape, ts.shape[-1:]):
        raise ValueError(f"pre_dose has shape {pre.shape}; expected that of times, {ts.shape}")
    if not pre.any():
        return None
    if _concrete(ts):
        t = np.broadcast_to(np.asarray(ts), np.broadcast_shapes(ts.shape, pre.shape))
        b = np.broadcast_to(pre, t.shape)
        # at equal times the pre-dose saves must come first (saves are in time order,
        # and a pre-dose save is earlier than a post-dose one at the same time)
        bad = (np.diff(t, axis=-1) == 0) & ~b[..., :-1] & b[..., 1:]
        if bad.any():
            i = int(np.argwhere(bad)[0][-1])
            raise ValueError(
                f"pre_dose: times[{i}] and times[{i + 1}] are equal and the later one is "
                "pre-dose; at equal times put the pre-dose saves first"
            )
    return jnp.asarray(pre)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # tests count traces: eqx.debug.get_num_traces
def simulate_core(model, solver, p, ev, ts2, y0=None, sched=None, pre=None, breaks=None):
    """Simulate a batch; ``ts2``: ``(N, T)`` save times, or ``(1, T)`` shared by all;
    ``breaks``: ``(N, J)`` or ``(1, J)`` discontinuity times, or None.

    The compiled entry point shared by :func:`simulate`, ``simulate_cohort`` and the
    calibration objectives: ``(states, outputs, status)``, a failed patient's states
    and outputs NaN at every save time.
    """
    n = ev.kind.shape[0]
    if model.state_names:
        ys, status = run(model, solver, p, ev, ts2, y0, sched, pre, breaks)
    else:  # algebraic model (e.g. a direct-effect PD model): nothing to integrate
        ys = jnp.zeros((n, ts2.shape[-1], 0), ts2.dtype)
        status = jnp.zeros((n,), jnp.int32)
    ts2 = jnp.broadcast_to(ts2, (n, ts2.shape[-1]))
    names = model.state_names
    states = {s: ys[..., i] for i, s in enumerate(names)}
    pe = {k: v[:, None] for k, v in p.items()}
    if sched is not None:  # outputs see the parameters' values at their save times
        pe.update(sched.at(ts2))
    outputs = model.observe(ts2, states, pe)
    outputs = {k: jnp.broadcast_to(v, ts2.shape) for k, v in outputs.items()}
    # A failed patient's states and outputs are NaN at every save time: values saved
    # before the failure are not trustworthy either, and a 0.0 or an inf from a solver
    # must never pass for a result. The other patients are untouched (bitwise).
    failed = (status != Status.OK)[:, None]
    states = {k: _nan_where(failed, v) for k, v in states.items()}
    outputs = {k: _nan_where(failed, v) for k, v in outputs.items()}
    return states, outputs, status


# the name calibrate/ (_map.py, _forecast.py) still imports; pending its move to
# ``simulate_core`` (tests/test_architecture.py allow-lists calibrate/)
_simulate_core = simulate_core


def _nan_where(mask, v):
    if not jnp.issubdtype(v.dtype, jnp.inexact):
        return v
    return jnp.where(mask, jnp.asarray(jnp.nan, v.dtype), v)


def simulate(
    model: Model,
    params: Mapping | None = None,
    regimen=None,
    times=None,
    *,
    solver: AbstractSolver | None = None,
    dtype=None,
    check: bool = True,
    y0: Mapping | None = None,
    pre_dose=None,
    breaks=None,
) -> Result:
    """Simulate a model for one patient or a batch.

    Arguments:
        model: a :class:`~twinjax.Model`.
        params: ``{name: value}``; missing entries take their defaults. A scalar is
            one patient; ``(N,)`` arrays make a batch of ``N`` patients. A
            :class:`~twinjax.Piecewise` value makes a parameter change in time
            (time-varying covariates, occasions): piecewise constant between its
            times, NONMEM's next-observation-carried-backward convention or
            last-observation-carried-forward.
        regimen: a :class:`~twinjax.Regimen` for everyone, a list of ``N`` regimens
            (one per patient), a compiled ``EventTable``, or None (no doses).
        times: ``(T,)`` save times (or ``(N, T)``), non-decreasing, >= 0. The
            simulation starts at time 0 from ``model.init(params)``.
        solver: ``solvers.Diffrax()`` (default) or ``solvers.Ensemble()``.
        dtype: floating dtype (default float64 when x64 is on, else float32).
        check: validate parameters against their bounds (skipped for traced values).
        y0: ``{state: value}`` initial states replacing ``model.init(params)`` for the
            states given (scalars or ``(N,)``); a reset (EVID 3/4) returns to them.
        pre_dose: booleans like ``times``: True where a save at the time of a dose (or
            other event) is taken before it, as an observation record placed before a
            dose record at the same time in a NONMEM dataset sees the pre-dose value.
            By default every save includes the events at its time. At equal times the
            pre-dose saves come first.
        breaks: discontinuity times of the model's right-hand side in ``t`` (a switch
            written in ``rhs``, e.g. ``jnp.where(t < 6.0, a, b)``: a forcing that
            starts or stops at a known time): ``(J,)`` for every patient or ``(N, J)``
            per patient, >= 0 and finite, in any order. No step crosses a break: the
            integration stops at it and restarts after it, and on each side the model
            is evaluated with the value that holds there (at times clipped into the
            open interval between breaks and events), so that an adaptive solver
            neither steps over the switch nor rejects steps to resolve it. A break
            changes no state (doses and infusions are events already).

    Returns:
        A :class:`Result` with a status code per patient. A failing patient never
        raises: it is flagged (the same code whichever solver ran it, see
        :class:`Status`), its states and outputs are NaN at every save time, and the
        rest of the batch is intact.

    Raises:
        ValueError: before any compilation, for unknown parameters, values outside
            their bounds, doses to unknown compartments, or malformed times or
            breaks.
    """
    if times is None:
        raise ValueError("simulate needs save times, e.g. times=jnp.linspace(0, 24, 97)")
    dtype = dtype or default_float()
    solver = solver if solver is not None else Diffrax()
    p, ev, ts, ts2, N, sched = prepare(model, params, regimen, times, dtype, check)
    pre = _pre_dose(pre_dose, ts)
    brk = check_breaks(breaks, ts2.shape[0], dtype)
    y0s = None
    if y0:
        unknown = [k for k in y0 if k not in model.state_names]
        if unknown:
            raise ValueError(
                f"y0 names unknown state(s) {unknown}; states are {list(model.state_names)}"
            )
        nb = ts2.shape[0]
        y0s = {}
        for k, v in y0.items():
            v = jnp.asarray(v, dtype)
            if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != nb):
                raise ValueError(
                    f"y0[{k!r}] has shape {v.shape}; expected a scalar or ({nb},) for the "
                    f"{nb} patient(s) given by the parameters, regimens and times"
                )
            y0s[k] = jnp.broadcast_to(v, (nb,))
    # shared save times go in as (1, T): solvers look them up more cheaply
    shared = ts.ndim == 1
    if pre is not None:
        pre = pre[None] if pre.ndim == 1 else jnp.broadcast_to(pre, ts2.shape)
        if not shared and pre.shape[0] == 1:
            pre = jnp.broadcast_to(pre, ts2.shape)
    states, outputs, status = simulate_core(
        model, solver, p, ev, ts[None] if shared else ts2, y0s, sched, pre, brk
    )
    states, outputs, status, p = unbatch((states, outputs, status, p), N)
    return Result(ts, states, outputs, status, p)
