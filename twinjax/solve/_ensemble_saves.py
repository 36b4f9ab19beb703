"""Saves of ``solvers.Ensemble``: the save times of a batch looked up per patient, and
the states at them written in place into the result, from a step's dense output.

The result is ``out`` ``(N, T, S)``; each patient has a cursor ``idx`` (its next save
index) and an end ``hi`` (its first index past the segment). After a step, the saves
falling in it are written in vectorised passes of up to ``SAVES_PER_PASS`` saves per
patient, until no patient has one left in the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SAVES_PER_PASS = 1  # saves written per patient by one vectorised pass after a step


def savers(rows_out, hi, ts, inf):
    """Save-time lookup and writer for patients ``rows_out`` of ``out``:
    ``(next_time, save_pass)``.

    ``ts``: ``(M, T)`` save times of those patients, or ``(1, T)`` shared by all (a
    1-D lookup); ``hi`` ``(M,)``: their ends; ``inf``: infinity in the time dtype.
    ``next_time(idx)`` is each patient's next save time (``inf`` past its end);
    ``save_pass(out, idx, t_right, values)`` writes the saves at or before
    ``t_right`` (up to ``SAVES_PER_PASS`` per patient), their states
    ``values(tj)`` ``(S, M, K)`` at the times ``tj`` ``(M, K)``, and advances ``idx``.
    """
    K = SAVES_PER_PASS
    offs = jnp.arange(K, dtype=jnp.int32)
    T = ts.shape[-1]
    local = jnp.arange(rows_out.shape[0])

    def lookup(j):  # save times at indices j (clamped), (M,) or (M, K)
        j = jnp.clip(j, 0, T - 1)
        if ts.shape[0] == 1:  # the same times for everyone: a 1-D lookup
            return ts[0].at[j].get(mode="promise_in_bounds")
        r = local if j.ndim == 1 else local[:, None]
        return ts.at[r, j].get(mode="promise_in_bounds")

    def next_time(i):
        return jnp.where(i < hi, lookup(i), inf)

    def save_pass(o, i, t_right, values):
        """Write up to K saves per patient falling at or before ``t_right``."""
        j = i[:, None] + offs[None, :]  # (M, K) candidate save indices
        tj = jnp.where(j < hi[:, None], lookup(j), inf)
        ok = tj <= t_right[:, None]  # save times are sorted: a prefix of the K
        val = values(tj)  # (S, M, K)
        dest = jnp.where(ok, j, T)  # out of range: dropped
        o = o.at[rows_out[:, None], dest].set(jnp.moveaxis(val, 0, -1), mode="drop")
        return o, i + jnp.sum(ok, axis=1, dtype=jnp.int32)

    return next_time, save_pass


def write_saves(saves, out, idx, t_right, values):
    """Every save of each patient at or before ``t_right`` (``(M,)``, or a scalar),
    written into ``out`` with ``save_pass`` until none is left: ``(out, idx)``.
    ``saves``: ``(next_time, save_pass)`` of :func:`savers`."""
    next_time, save_pass = saves
    return jax.lax.while_loop(
        lambda c: jnp.any(next_time(c[1]) <= t_right),
        lambda c: save_pass(c[0], c[1], t_right, values),
        (out, idx),
    )
