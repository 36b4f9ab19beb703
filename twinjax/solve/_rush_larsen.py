"""Second-order Rush-Larsen for batches of cells: the step, the step-size rules and the
loop, written once for every model with gates.

A model with gates splits its state into gates ``dx/dt = (x_inf - x) / tau``, the
other states, advanced by an explicit rule, and optionally a block of linear states
``dx/dt = Q(y) x`` (a Markov chain) that is integrated exactly for frozen ``Q``. One
step of the exponential midpoint scheme (Perego M, Veneziani A. Electron Trans Numer
Anal 35:234-256, 2009; after Rush S, Larsen H. IEEE Trans Biomed Eng 25:389-392, 1978):

1. evaluate at ``(t, y)``; choose the step ``dt``; advance half a step (gates exactly
   for the frozen ``x_inf, tau``, the others by explicit Euler, the linear block by
   the hook's half step);
2. evaluate at the midpoint; advance a full step from ``y`` with the midpoint's
   coefficients and derivatives (the linear block keeps its start value here; the
   hook's full step replaces it after the stages).

The two stages run as a two-iteration ``fori_loop`` around one evaluation of the
model, so the compiled loop holds one copy of the equations (compile time).

The loop is the shared step loop of ``solve/`` (``_ensemble_run.drive``, the one
``solvers.Ensemble`` runs): batched structure-of-arrays, one ``while_loop`` over steps
in which every cell has its own time and step; :func:`step_body` is Rush-Larsen's body
of it, :func:`integrate` its driver. A cell is done at its end time ``t_end``. The step
of each cell is the model's proposal (``propose``) landing exactly on a discontinuity
time ``t_disc`` (e.g. the end of a stimulus pulse) and on ``t_end``. An optional
controller (:func:`error_controller`) proposes the next step from the one just taken.
A per-step reduction hook folds every accepted step into accumulators (cardiac
biomarkers, qNet) so that no trajectory need be stored; optional saves interpolate
the state linearly at given times, written by the loop's save machinery
(``_ensemble_saves.py``, behind its per-cell gate). Status codes follow
:mod:`twinjax.solve._status`: a non-finite step stops that cell as ``NONFINITE``
(its state stays at the last finite one); a cell still short of ``t_end`` after
``max_steps`` loop iterations is ``MAX_STEPS``.

The carry packs the state and the accumulators as two ``(S, N)`` and ``(A, N)``
arrays (two loop buffers instead of one per name).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._ensemble_run import drive
from ._ensemble_saves import savers, write_saves
from ._status import Status


class LinearBlock(NamedTuple):
    """States integrated by their own exact or implicit rule (e.g. a Markov chain).

    ``names``: the states, in the order of the last axis of ``x`` (``(N, m)``);
    ``keep(y)``: the ``(N,)`` array the rules need of a stage's state (e.g. V);
    ``half(h, kept, x0)``:
    the first stage's step of length ``h`` (``(N,)``) from ``x0``; ``full(dt, kept,
    x0)``: the full step, with ``kept`` taken at the midpoint.
    """

    names: tuple[str, ...]
    keep: Callable
    half: Callable
    full: Callable


def pack(d: dict, names: tuple) -> jax.Array:
    """``{name: (N,)}`` to a stacked ``(len(names), N)`` array."""
    return jnp.stack([d[k] for k in names])


def unpack(a: jax.Array, names: tuple) -> dict:
    """The inverse of :func:`pack`."""
    return {k: a[i] for i, k in enumerate(names)}


def advance(y, gates: tuple, coeffs: dict, derivs: dict, h, linear_x=None, linear_names=()):
    """``y`` advanced by ``h``: gates exactly for frozen ``(inf, tau)``, the other
    states by ``y + h dy/dt``, the linear block set to ``linear_x``."""
    out = {}
    for k in gates:
        inf, tau = coeffs[k]
        out[k] = inf + (y[k] - inf) * jnp.exp(-h / tau)
    for k, dk in derivs.items():
        if k not in linear_names:
            out[k] = y[k] + h * dk
    for i, s in enumerate(linear_names):
        out[s] = linear_x[..., i]
    return out


def land(dt, t, t_disc, t_end, active):
    """Steps that land exactly on the discontinuity ``t_disc`` (when before it) and on
    ``t_end`` (when they would pass it); 0 for a cell that is done."""
    dt = jnp.where(t < t_disc, jnp.minimum(dt, t_disc - t), dt)
    dt = jnp.where(dt >= t_end - t, t_end - t, dt)
    return jnp.where(active, dt, 0.0)


def error_controller(rtol: float, y, d0, d1, dt, h_err, mag):
    """The next step from the step just taken (a local error controller).

    For the controlled states (``y``: (K, N), their derivatives ``d0`` at the step
    start and ``d1`` at the midpoint) the second-order result minus the explicit
    Euler one is ``dt (d1 - d0)``, a local error estimate of order ``dt^2``. Scaled
    by ``rtol (|y| + mag)`` its largest entry ``err`` sets the next step
    ``dt * clip(0.9 / sqrt(err), 0.2, 2)``. The step is not repeated when
    ``err > 1``: the estimate steers the next step. Cells that took no step keep
    their proposal.
    """
    scale = rtol * (jnp.abs(y) + mag)
    err = jnp.max(jnp.abs(dt[None, :] * (d1 - d0)) / scale, axis=0)
    fac = jnp.clip(0.9 * jax.lax.rsqrt(jnp.maximum(err, 1e-12)), 0.2, 2.0)
    return jnp.where(dt > 0, dt * fac, h_err)


class Outcome(NamedTuple):
    """What :func:`integrate` returns (every entry per cell unless said otherwise)."""

    t: jax.Array
    y: dict
    acc: jax.Array
    steps: jax.Array  # loop iterations (a scalar: the batch's)
    status: jax.Array
    saved: dict | None


def integrate(
    evaluate: Callable,
    y: dict,
    t_end,
    *,
    gates: tuple[str, ...],
    controlled: tuple[str, ...],
    propose: Callable,
    t_disc,
    max_steps: int,
    acc0=None,
    reduce: Callable | None = None,
    controller: Callable | None = None,
    h0=None,
    linear: LinearBlock | None = None,
    ts=None,
) -> Outcome:
    """Integrate every cell from ``t = 0`` to its ``t_end`` (``(N,)``).

    Arguments:
        evaluate: ``(t, y) -> (coeffs, derivs, aux)``: ``{gate: (inf, tau)}``,
            ``{state: dy/dt}`` for every state that is not a gate, and an ``(N,)``
            array the reduction needs (taken from the midpoint stage, e.g. a current).
        y: the start state ``{name: (N,)}`` (its order is the packed order).
        gates: the gate names.
        controlled: the non-gate states whose derivatives the step rules see, packed
            as ``D0`` (at the step start) and ``D1`` (at the midpoint), ``(K, N)``.
        propose: ``(t, y, derivs, h_err) -> dt`` at the step start (before landing).
        t_disc: ``(N,)`` a discontinuity time to land on (e.g. a stimulus end).
        max_steps: loop iterations before the cells still running are ``MAX_STEPS``.
        acc0, reduce: accumulators ``(A, N)`` and ``reduce(acc, ok, t, dt, Y, Y_new,
            D0, D1, aux) -> acc`` (``Y``: packed states before and after the step).
        controller: ``(y_controlled, D0, D1, dt, h_err) -> h_err``; ``h0``: its
            first proposal ``(N,)`` (without a controller ``propose`` gets None).
        linear: a :class:`LinearBlock` (None: no linear block).
        ts: ``(T,)`` save times or None (then ``saved`` is None); a save at time
            0 is the start state, the others are interpolated linearly in the step
            that reaches them (steps should be at most the save spacing).
    """
    names = tuple(y)
    t0 = jnp.zeros_like(t_end)
    N = t_end.shape[0]
    acc0 = jnp.zeros((0, N), t_end.dtype) if acc0 is None else acc0
    if controller is not None and h0 is None:
        raise ValueError("integrate: a controller needs its first proposal h0")
    h0 = None if controller is None else h0  # no controller: no proposal carried
    rows_out = jnp.arange(N)
    inf = jnp.asarray(jnp.inf, t_end.dtype)
    Y0 = pack(y, names)
    out = idx = hi = ts2 = None
    if ts is not None:
        T = ts.shape[0]
        ts2, hi = ts[None, :], jnp.full((N,), T, jnp.int32)
        out = jnp.zeros((N, T, len(names)), t_end.dtype)
        idx = jnp.zeros((N,), jnp.int32)
        # the saves at the start (time 0) take the start state
        out, idx = write_saves(
            savers(rows_out, hi, ts2, inf), out, idx, t0, lambda tj: Y0[..., None]
        )
    spec = dict(
        evaluate=evaluate,
        names=names,
        gates=gates,
        controlled=controlled,
        propose=propose,
        t_disc=t_disc,
        t_end=t_end,
        reduce=reduce,
        controller=controller,
        linear=linear,
    )

    def make(rows, ts_s, hi_s, args_s):
        saves = None if ts_s is None else savers(rows, hi_s, ts_s, inf)

        def gate0(t, i):
            return None if saves is None else saves[0](i)

        return functools.partial(step_body, spec, saves, inf), gate0

    status0 = jnp.zeros((N,), jnp.int32)
    active0 = t0 < t_end
    it0 = jnp.zeros((), jnp.int32)
    carry = (t0, Y0, acc0, h0, active0, status0, it0, out, idx, None)
    t, Y, A, _, _, status, it, out, _, _ = drive(make, carry, rows_out, ts2, hi, None, 0, max_steps)
    status = status.astype(jnp.int32)
    saved = None if out is None else {k: out[:, :, i] for i, k in enumerate(names)}
    return Outcome(t, unpack(Y, names), A, it, status, saved)


def step_body(spec, saves, inf, c):
    """One Rush-Larsen step of every running cell, as a body of the shared step loop
    (``_ensemble_run.drive``). ``c``: the loop's carry ``(t, Y, A, h_err, active,
    status, it, out, idx, gate)``: the packed state, the reduction's accumulators in
    the method's slot ``k``, the controller's proposal in ``h`` (None without one);
    ``spec``: :func:`integrate`'s arguments; ``saves``: ``_ensemble_saves.savers``'s
    pair (None without saves), written from the step's linear interpolation."""
    evaluate, names, gates = spec["evaluate"], spec["names"], spec["gates"]
    controlled, propose, linear = spec["controlled"], spec["propose"], spec["linear"]
    t_disc, t_end = spec["t_disc"], spec["t_end"]
    reduce, controller = spec["reduce"], spec["controller"]
    lin_names = linear.names if linear is not None else ()
    imk = jnp.asarray([names.index(k) for k in lin_names], jnp.int32)
    t, Y, A, h_err, active, status, it, out, idx, gate = c
    y = unpack(Y, names)
    x0 = jnp.stack([y[s] for s in lin_names], axis=-1) if linear is not None else None

    def stage(k, s):
        # k = 0: evaluate at (t, y), choose dt, half step to the midpoint;
        # k = 1: evaluate at the midpoint, full step from y.
        Yk, dt, D0, _, _, _ = s
        first = k == 0
        yk = unpack(Yk, names)
        g, d, aux = evaluate(t + 0.5 * dt * k, yk)
        D = pack(d, controlled)
        dt = jnp.where(first, land(propose(t, y, d, h_err), t, t_disc, t_end, active), dt)
        h = jnp.where(first, 0.5 * dt, dt)
        D0 = jnp.where(first, D, D0)
        if linear is None:
            x, kept = None, jnp.zeros((0,), t.dtype)
        else:
            kept = linear.keep(yk)
            x = jax.lax.cond(first, lambda kk: linear.half(0.5 * dt, kk, x0), lambda kk: x0, kept)
        Yn = pack(advance(y, gates, g, d, h, x, lin_names), names)
        return Yn, dt, D0, D, aux, kept

    z = jnp.zeros_like(t)
    zD = jnp.zeros((len(controlled),) + t.shape, t.dtype)
    kept0 = z if linear is not None else jnp.zeros((0,), t.dtype)
    Y1, dt, D0, D1, aux, kept = jax.lax.fori_loop(0, 2, stage, (Y, z, zD, zD, z, kept0))
    if linear is not None:
        Y1 = Y1.at[imk].set(linear.full(dt, kept, x0).T)
    if controller is not None:
        h_err = controller(pack(y, controlled), D0, D1, dt, h_err)
    last = dt >= t_end - t
    finite = jnp.all(jnp.isfinite(Y1), axis=0)
    bad = active & ~finite
    ok = active & finite
    Y_new = jnp.where(ok[None, :], Y1, Y)
    t_new = jnp.where(ok, jnp.where(last, t_end, t + dt), t)
    if reduce is not None:
        A = reduce(A, ok, t, dt, Y, Y_new, D0, D1, aux)
    status = jnp.where(bad, Status.NONFINITE, status).astype(jnp.int32)
    if out is not None:
        t_right = jnp.where(ok, t_new, -inf)

        def saves_in_step(oi):
            safe = jnp.where(dt > 0, dt, 1.0)

            def values(tj):  # linear interpolation in the step, (S, N, K)
                th = jnp.clip((tj - t[:, None]) / safe[:, None], 0.0, 1.0)
                return Y[..., None] + th[None] * (Y_new - Y)[..., None]

            o, i = write_saves(saves, *oi, t_right, values)
            return o, i, saves[0](i)

        out, idx, gate = jax.lax.cond(
            jnp.any(gate <= t_right), saves_in_step, lambda oi: (*oi, gate), (out, idx)
        )
    still = ok & (t_new < t_end)
    return t_new, Y_new, A, h_err, still, status, it + 1, out, idx, gate
