"""The driver of ``solvers.Ensemble``'s step loop over one segment: the layout, the
starting step, the saves at the segment's start, the loop (``_ensemble_loop.py``),
compaction of the patients still running, and the status codes at the end.

:func:`drive` is the step loop itself (its ``while_loop``, condition, iteration limit,
``MAX_STEPS`` code and compaction), shared by
every batched integrator of ``solve/``: ``solvers.Ensemble``'s methods (the general
body of ``_ensemble_loop.py`` with their method of ``_ensemble_method.py``, or the lean
fixed-step body of ``_ensemble_lean.py``) and Rush-Larsen (the general body with its
method, ``_rush_larsen.rush_larsen_method``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._compaction import compacted_while, while_running
from ._ensemble_layout import all_finite, on_rows, stacked, state_major, tmap
from ._ensemble_loop import make_loop
from ._ensemble_saves import SAVES_PER_PASS, savers, write_saves
from ._ensemble_step import initial_step
from ._status import Status

COMPACT_MIN = 16  # smallest compacted batch worth a second loop


def run(solver, f, t0, t1, y0, args, save, h_prev=None, skip=None, *, rows, reduce=None):
    """Integrate the batch ``y0`` ``(N, S)`` from ``t0`` to ``t1`` (``(N,)`` each)
    with the :class:`~twinjax.solvers.Ensemble` ``solver`` (its method resolved).

    Arguments:
        f: the vector field ``f(t, Y, args)``.
        save: None, or ``(ts, out, idx, hi)``: save times, the result ``(N, T, S)``,
            each patient's first save index in the segment and its end.
        h_prev: each patient's last proposed step (NaN: none), or None.
        skip: patients that failed before (not integrated; they report OK), or None.
        rows: the loop runs on a tuple of rows (``Ensemble._rows``), else stacked.
        reduce: None, or a ``_reductions.StepReduction`` folded into accumulators at
            every step (the general body, also for a fixed step on rows; its
            accumulators ride in the carry's ``k`` slot beside the derivative).

    Returns:
        ``(out, y1, status)``, and each patient's step to carry on as a fourth item
        when ``h_prev`` is given; with ``reduce`` the accumulators ``(N, A)`` last.
    """
    # Internally state-major: ``Y[S, N]``, one contiguous row per state, so that
    # every stage is a handful of fused, vectorised loops over the patients.
    n, S = y0.shape
    f = state_major(f)
    y0 = y0.T
    if rows:
        f = on_rows(f, S)
        y0 = tuple(y0[i] for i in range(S))
    adaptive = solver.tableau.b_err is not None
    # fixed step on rows: the lean loop (``_ensemble_lean.py``)
    lean = not adaptive and isinstance(y0, tuple) and reduce is None
    f0 = f(t0, y0, args)
    if h_prev is None or not adaptive:
        h0 = initial_step(solver, f, t0, t1, y0, f0, args)
    else:
        h0 = jnp.where(
            jnp.isfinite(h_prev),
            jnp.minimum(h_prev, jnp.maximum(t1 - t0, 0.0)),
            initial_step(solver, f, t0, t1, y0, f0, args),
        )
    if adaptive:  # a chosen step, not a function of the parameters (see body)
        h0 = jax.lax.stop_gradient(h0)
    dtype = stacked(y0).dtype
    inf = jnp.asarray(jnp.inf, dtype)
    ts = hi = None
    if save is not None:
        ts, _, _, hi = save

    rows_out = jnp.arange(n)
    # A start from a non-finite state or derivative is not integrated: NONFINITE.
    # A patient that failed before (skip) is not integrated and reports OK.
    start_ok = all_finite(y0, f0)
    to_run = start_ok if skip is None else start_ok & ~skip
    active0 = (t0 < t1) & to_run
    status0 = jnp.where(start_ok, 0, Status.NONFINITE)
    if skip is not None:
        status0 = jnp.where(skip, 0, status0)
    status0 = status0.astype(jnp.int32)
    # the lean loop steps a patient that is not running by t1 - t = 0
    t_start = jnp.where(active0, t0, t1) if lean else t0
    # the k slot: the derivative and the reduction's accumulators (None: none)
    k0 = (f0, None if reduce is None else reduce.acc0.T)
    carry = start(t0, t_start, y0, k0, h0, active0, status0, save, inf)
    # compaction (see :func:`drive`)
    m = int(n * solver.compact) if solver.compact else 0
    batched = all(getattr(a, "ndim", 0) >= 1 and a.shape[0] == n for a in jax.tree.leaves(args))
    if m < COMPACT_MIN or not batched:
        m = 0
    loop = dict(adaptive=adaptive, lean=lean, inf=inf)
    if reduce is not None:
        loop["reduce"] = reduce.update

    def make(sel, ts_s, hi_s, args_s):
        t1_s = t1 if sel is rows_out else t1[sel]
        return make_loop(solver, f, sel, t1_s, args_s, hi_s, ts_s, **loop)

    carry = drive(make, carry, rows_out, ts, hi, args, m, solver.max_steps)
    y, h, status, out = stacked(carry[1]).T, carry[3], carry[5], carry[7]
    if lean:
        # the lean loop does not look for non-finite steps: a patient that ran
        # and ends non-finite (its state, or its derivative there) failed
        t_end, y_end = carry[0], carry[1]
        ok = all_finite(y_end, f(t_end, y_end, args))
        status = jnp.where(active0 & ~ok, Status.NONFINITE, status)
    status = status.astype(jnp.int32)
    acc = () if reduce is None else (carry[2][1].T,)
    if h_prev is None:
        return (out, y, status, *acc)
    h_keep = jnp.where(t1 > t0, h, h_prev)  # a zero-length segment keeps the old step
    return (out, y, status, h_keep, *acc)


def start(t0, t_start, y0, k0, h0, active0, status0, save, inf):
    """The step loop's carry at the start: ``(t, y, k, h, active, status, it, out,
    idx, gate)``, the saves at ``t0`` written with the start state ``y0`` (``(S, N)``
    stacked, or a tuple of ``S`` rows), the save gate left for :func:`drive` to set.

    The one start of every batched integrator of ``solve/`` (:func:`run` for
    ``solvers.Ensemble``, ``_rush_larsen.integrate``). ``t_start``: the loop's start
    times (``t0``, or for the lean loop a patient's end when it does not run); ``k0``:
    the pair ``(derivative, accumulators)`` (either None); ``h0``: the first step or
    proposal (None: none carried); ``save``: None, or ``(ts, out, idx, hi)`` (save
    times ``(N, T)`` or ``(1, T)``, the result ``(N, T, S)``, each patient's first save
    index and its end); ``inf``: infinity in the time dtype.
    """
    out = idx = None
    if save is not None:
        ts, out, idx, hi = save
        S = len(y0) if isinstance(y0, tuple) else y0.shape[0]
        n = t0.shape[0]
        # saves at the start take the start state (in a segment: after its events)
        y0_saves = jnp.broadcast_to(stacked(y0)[..., None], (S, n, SAVES_PER_PASS))
        saves = savers(jnp.arange(n), hi, ts, inf)
        out, idx = write_saves(saves, out, idx, t0, lambda tj: y0_saves)
    it0 = jnp.zeros((), jnp.int32)
    return (t_start, y0, k0, h0, active0, status0, it0, out, idx, None)


def drive(make, carry, rows_out, ts, hi, args, m, max_steps):
    """The step loop, the one ``while_loop`` of every batched integrator of ``solve/``
    (``solvers.Ensemble``'s methods, Rush-Larsen of ``_rush_larsen.py``).

    ``carry``: ``(t, y, k, h, active, status, it, out, idx, gate)``, ``k`` the pair
    ``(derivative, accumulators)`` (either None where a method carries none), ``gate``
    still unset (``gate0`` sets it); ``make(rows, ts, hi, args)``: the method's
    ``(body, gate0)`` for the patients ``rows`` of ``out`` (their save times ``ts``,
    save ends ``hi`` and arguments ``args``); ``m``: the compacted batch (0: none);
    ``max_steps``: loop iterations (accepted and rejected steps) before the patients
    still running stop.

    The loop runs while a patient is running and fewer than ``max_steps`` iterations
    have run. At the end a patient still running is ``Status.MAX_STEPS``, unless the
    last step it tried was non-finite (a body that retries such a step keeps the
    patient running with ``Status.NONFINITE``): then it stays ``NONFINITE``, the cause.

    Compaction (``_compaction.compacted_while``): patients finish a segment after
    different numbers of steps, and a lock-step loop pays for all of them until the
    last one is done. Once no more than ``m`` are running, the running ones are
    gathered into a batch of ``m`` and finish there; results are per patient, so
    bitwise the same.
    """
    carry = _loop(make, carry, rows_out, ts, hi, args, m, max_steps)
    active, status = carry[4], carry[5]
    # still running: out of steps, unless the last step tried was non-finite
    status = jnp.where(active & (status != Status.NONFINITE), Status.MAX_STEPS, status)
    return (*carry[:5], status, *carry[6:])


def _loop(make, carry, rows_out, ts, hi, args, m, max_steps):
    """:func:`drive`'s loops (the whole batch, then the compacted one, see
    ``_compaction.compacted_while``), without the end status."""

    def loop(sel, min_active):
        if sel is None:
            body, gate0 = make(rows_out, ts, hi, args)
        else:
            args_c = jax.tree.map(lambda a: a[sel], args)
            ts_c = None if ts is None else (ts if ts.shape[0] == 1 else ts[sel])
            hi_c = None if hi is None else hi[sel]
            body, gate0 = make(sel, ts_c, hi_c, args_c)
        cond = while_running(lambda c: c[4], lambda c: c[6], min_active, max_steps)
        return cond, body, lambda c: (*c[:-1], gate0(c[0], c[8]))

    def gather(c, sel):
        t, y, k, h, active, status, it, out, idx, _ = c
        return (
            t[sel],
            tmap(lambda a: a[..., sel], y),
            jax.tree.map(lambda a: a[..., sel], k),  # (k, accumulators)
            h[sel],
            active[sel],
            status[sel],
            it,
            out,
            None if idx is None else idx[sel],
            None,
        )

    def scatter(c, sub, sel):
        t, y, k, h, active, status, it, out, idx, _ = c
        tc, yc, kc, hc, ac, sc, it, out, ic, _ = sub
        return (
            t.at[sel].set(tc),
            tmap(lambda a, b: a.at[..., sel].set(b), y, yc),
            jax.tree.map(lambda a, b: a.at[..., sel].set(b), k, kc),
            h.at[sel].set(hc),
            active.at[sel].set(ac),
            status.at[sel].set(sc),
            it,
            out,
            None if idx is None else idx.at[sel].set(ic),
            None,
        )

    return compacted_while(loop, carry, m, lambda c: c[4], gather, scatter)
