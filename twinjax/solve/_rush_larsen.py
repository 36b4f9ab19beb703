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
``solvers.Ensemble`` runs) with its general body (``_ensemble_loop.step_body``):
batched structure-of-arrays, one ``while_loop`` over steps in which every cell has
its own time and step. Rush-Larsen is a method of that body
(:func:`rush_larsen_method`: the two-stage trial step, the accept rule "finite, else
``NONFINITE``" that a fixed step of ``solvers.Ensemble`` has too, the controller, a
linear dense output); :func:`integrate` is its entry point. A cell is done at its end
time ``t_end``. The step of each cell is the model's proposal (``propose``) landing
exactly on a discontinuity time ``t_disc`` (e.g. the end of a stimulus pulse) and on
``t_end`` (``_loop_parts.land``, the loop's). An optional
controller (:func:`error_controller`) proposes the next step from the one just taken.
A per-step reduction (``_reductions.StepReduction``, the one ``solvers.Ensemble``
takes) folds every accepted step into accumulators (cardiac biomarkers, qNet) so
that no trajectory need be stored; optional saves interpolate
the state linearly at given times, written by the loop's save machinery
(``_ensemble_saves.py``, behind its per-cell gate). Status codes follow
:mod:`twinjax.solve._status`: a non-finite step stops that cell as ``NONFINITE``
(its state stays at the last finite one); a cell still short of ``t_end`` after
``max_steps`` loop iterations is ``MAX_STEPS``.

The carry packs the state and the accumulators as two ``(S, N)`` and ``(A, N)``
arrays (two loop buffers instead of one per name); no derivative is carried (each
step evaluates the model at its start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._ensemble_loop import general_loop
from ._ensemble_run import drive, start
from ._loop_parts import Method, Trial, finite_accept, finite_end, land
from ._reductions import StepReduction


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
    reduce: StepReduction | None = None,
    controller: Callable | None = None,
    h0=None,
    linear: LinearBlock | None = None,
    ts=None,
) -> Outcome:
    """Integrate every cell from ``t = 0`` to its ``t_end`` (``(N,)``): the step loop
    (``_ensemble_run.drive``) with the general body (``_ensemble_loop.step_body``) and
    Rush-Larsen as its method (:func:`rush_larsen_method`).

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
        reduce: a ``_reductions.StepReduction``: accumulators ``acc0`` ``(A, N)``
            (state-major, as the loop carries them) and ``update(acc, ok, t, dt, Y,
            Y_new, D0, D1, aux) -> acc``, the general body's reduction signature with
            the derivatives ``D0``, ``D1`` and the midpoint's ``aux`` (``Y``: packed
            states before and after the step).
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
    acc0 = jnp.zeros((0, N), t_end.dtype) if reduce is None else reduce.acc0
    if controller is not None and h0 is None:
        raise ValueError("integrate: a controller needs its first proposal h0")
    h0 = None if controller is None else h0  # no controller: no proposal carried
    rows_out = jnp.arange(N)
    inf = jnp.asarray(jnp.inf, t_end.dtype)
    Y0 = pack(y, names)
    save = ts2 = hi = None
    if ts is not None:
        T = ts.shape[0]
        ts2, hi = ts[None, :], jnp.full((N,), T, jnp.int32)
        out = jnp.zeros((N, T, len(names)), t_end.dtype)
        save = (ts2, out, jnp.zeros((N,), jnp.int32), hi)
    method = rush_larsen_method(
        evaluate, names, gates, controlled, propose, t_disc, t_end, controller, linear
    )
    update = None if reduce is None else reduce.update

    def make(rows, ts_s, hi_s, args_s):
        return general_loop(method, t_end, rows, ts_s, hi_s, inf, update)

    status0 = jnp.zeros((N,), jnp.int32)
    # the k slot: no carried derivative (each step evaluates its start), the accumulators
    carry = start(t0, t0, Y0, (None, acc0), h0, t0 < t_end, status0, save, inf)
    t, Y, (_, A), _, _, status, it, out, _, _ = drive(
        make, carry, rows_out, ts2, hi, None, 0, max_steps
    )
    status = status.astype(jnp.int32)
    saved = None if out is None else {k: out[:, :, i] for i, k in enumerate(names)}
    return Outcome(t, unpack(Y, names), A, it, status, saved)


def rush_larsen_method(
    evaluate, names, gates, controlled, propose, t_disc, t_end, controller, linear
) -> Method:
    """Rush-Larsen as a ``_loop_parts.Method`` of the general step body
    (:func:`integrate`'s arguments). The carried state ``Y`` is packed ``(S, N)``,
    the carried ``h`` the controller's proposal (None without one), no derivative is
    carried. Its parts: no proposal before the trial (the step is chosen from the
    first stage's evaluation, by ``propose`` and ``_loop_parts.land`` on ``t_disc``
    and ``t_end``); the trial is the two stages around one evaluation of the model
    (a two-iteration ``fori_loop``) and the linear block's full step; accept "finite,
    else ``NONFINITE``"; the controller (if any) proposes the next step from the
    derivatives at the start and the midpoint; the dense output is linear.
    """
    lin_names = linear.names if linear is not None else ()
    imk = jnp.asarray([names.index(k) for k in lin_names], jnp.int32)

    def trial(t, Y, k, h_err, active, it):
        y = unpack(Y, names)
        x0 = jnp.stack([y[s] for s in lin_names], axis=-1) if linear is not None else None

        def stage(j, s):
            # j = 0: evaluate at (t, y), choose dt, half step to the midpoint;
            # j = 1: evaluate at the midpoint, full step from y.
            Yk, dt, D0, _, _, _ = s
            first = j == 0
            yk = unpack(Yk, names)
            g, d, aux = evaluate(t + 0.5 * dt * j, yk)
            D = pack(d, controlled)
            dt = jnp.where(first, land(propose(t, y, d, h_err), t, t_end, active, t_disc), dt)
            h = jnp.where(first, 0.5 * dt, dt)
            D0 = jnp.where(first, D, D0)
            if linear is None:
                x, kept = None, jnp.zeros((0,), t.dtype)
            else:
                kept = linear.keep(yk)
                x = jax.lax.cond(
                    first, lambda kk: linear.half(0.5 * dt, kk, x0), lambda kk: x0, kept
                )
            Yn = pack(advance(y, gates, g, d, h, x, lin_names), names)
            return Yn, dt, D0, D, aux, kept

        z = jnp.zeros_like(t)
        zD = jnp.zeros((len(controlled),) + t.shape, t.dtype)
        kept0 = z if linear is not None else jnp.zeros((0,), t.dtype)
        Y1, dt, D0, D1, aux, kept = jax.lax.fori_loop(0, 2, stage, (Y, z, zD, zD, z, kept0))
        if linear is not None:
            Y1 = Y1.at[imk].set(linear.full(dt, kept, x0).T)
        # what the controller needs: the controlled states at the start
        err = None if controller is None else pack(y, controlled)
        last = dt >= t_end - t
        finite = jnp.all(jnp.isfinite(Y1), axis=0)
        return Trial(dt, last, Y1, None, finite, err, None, (D0, D1, aux))

    def control(tr, accept, active, h_err, yc):
        if controller is None:
            return h_err
        D0, D1, _ = tr.red
        return controller(yc, D0, D1, tr.h, h_err)

    def dense(t, Y, k, tr):
        dt = tr.h
        safe = jnp.where(dt > 0, dt, 1.0)

        def values(tj):  # linear interpolation in the step, (S, N, K)
            th = jnp.clip((tj - t[:, None]) / safe[:, None], 0.0, 1.0)
            return Y[..., None] + th[None] * (tr.y1 - Y)[..., None]

        return values

    return Method(lambda t, Y, k, h, active: h, trial, finite_accept, control, dense, finite_end())
