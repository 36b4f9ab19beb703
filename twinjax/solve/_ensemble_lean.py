"""The lean fixed-step loop of ``solvers.Ensemble`` (``"rk4"`` on the rows layout):
one step of it, and its save gate.

On the Lorenz benchmark (N = 65,536) this loop costs 1.2x the CPU time of a
hand-written RK4 on three arrays: no carried derivative, no per-step selects or
finiteness checks, and save times looked up only in steps that may hold one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._ensemble_layout import stacked
from ._ensemble_saves import write_saves
from ._ensemble_step import dense, step


def lean_body(solver, f, t1, args, saves, inf, c):
    """The fixed step on rows: what the hand-written loop does, plus the per-patient
    end time. A patient that is not running has ``t = t1`` (set so before the loop),
    so its step is ``h = 0``, which leaves its state as it is: nothing is selected per
    step. The derivative at the start of the step is evaluated in the step (XLA fuses
    it into the stages) rather than carried; a non-finite state stays non-finite, so it
    is found once after the loop (``_ensemble_run.run``).

    Saves: the per-patient look-up of the next save time (a pass over the batch, and
    the step's results materialised for it) is gated by two scalars carried in
    ``gate``: an upper bound of every patient's time (it grows by ``dt`` a step,
    rounded up) and the earliest save still to write. Until the bound reaches that
    save no patient can have one in its step, so the step is the bare arithmetic;
    saves at a segment's end are looked up in its last step only.

    ``c``: the loop's carry ``(t, y, k, h, active, status, it, out, idx, gate)`` (its
    ``k`` slot, ``(derivative, None)``, passes through);
    ``saves``: ``(next_time, save_pass)`` of ``_ensemble_saves.savers`` (None without
    saves).
    """
    t, y, k, h, active, status, it, out, idx, gate = c
    tab = solver.tableau

    def advance(t, y):
        # = min(h0, t1 - t) of the general loop: h0 = min(dt, t1 - t0), t >= t0
        h_eff = jnp.minimum(jnp.asarray(solver.dt, t.dtype), t1 - t)
        last = h_eff >= t1 - t
        k0 = f(t, y, args)
        y1 = step(tab, f, t, y, k0, h_eff, args)[0]
        return h_eff, k0, y1, jnp.where(last, t1, t + h_eff)

    _, _, y1, t_new = advance(t, y)
    if out is not None:
        next_time = saves[0]

        def saves_in_step(oi):
            # The step again (only in steps that may save): the branch then reads
            # nothing but the loop's carry, so XLA does not materialise (or
            # recompute) the step's results for it in every step. The same
            # operations: the same values.
            h_eff, k0, y1, t_new = advance(t, y)
            safe_h = jnp.where(h_eff > 0, h_eff, 1.0)
            t_right = jnp.where(t < t1, t_new, -inf)

            def values(tj):
                theta = jnp.clip((tj - t[:, None]) / safe_h[:, None], 0.0, 1.0)
                theta = jnp.where(h_eff[:, None] > 0, theta, 1.0)
                k1 = f(t + h_eff, y1, args)
                Y0, Y1 = stacked(y), stacked(y1)
                K0, K1 = stacked(k0), stacked(k1)
                return dense(tab, theta, Y0, Y1, K0, K1, h_eff, None)

            o, i = write_saves(saves, *oi, t_right, values)
            return o, i, jnp.min(next_time(i))

        bound, t_save = gate
        # every t_new <= bound + dt; rounded up (4 eps relative), so that a save is
        # never missed whatever the rounding of t + h
        s = bound + jnp.asarray(solver.dt, bound.dtype)
        bound = s + 4 * jnp.finfo(s.dtype).eps * jnp.abs(s) + jnp.finfo(s.dtype).tiny
        out, idx, t_save = jax.lax.cond(
            t_save <= bound, saves_in_step, lambda oi: (*oi, t_save), (out, idx)
        )
        gate = (bound, t_save)
    return (t_new, y1, k, h, t_new < t1, status, it + 1, out, idx, gate)


def lean_gate(t, idx, saves):
    """The lean loop's save gate at its start (see :func:`lean_body`): the latest
    start time and the earliest pending save; None without saves."""
    if saves is None:
        return None
    # a NaN start time (its patient saves nothing) must not hide the others'
    lowest = jnp.finfo(t.dtype).min
    tmax = jnp.max(jnp.where(jnp.isnan(t), lowest, t))
    return jax.lax.stop_gradient((tmax, jnp.min(saves[0](idx))))
