"""Compaction of a batched loop whose rows finish at different iterations.

A lock-step ``while_loop`` over a batch pays for every row until the last one is done:
patients of the step loop finish a segment after different numbers of steps, subjects
of the batched Levenberg-Marquardt converge after different numbers of iterations.
:func:`compacted_while` runs the loop on the whole batch while more than ``m`` rows
are running, then gathers the running rows into a batch of ``m`` (the spare slots
repeat a finished row, which the loop leaves as it is) and finishes them there. Each
row's iterations are its own, so the results are bitwise those of the uncompacted
loop.

Users: the step loop of every batched integrator (``_ensemble_run.drive``) and the
batched MAP optimiser (``calibrate/_map_optimisers.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def while_running(running: Callable, count: Callable, min_active: int, max_iter) -> Callable:
    """The condition of such a loop: more than ``min_active`` rows running (some, when
    0) and fewer than ``max_iter`` iterations. ``running(carry)``: ``(n,)`` booleans;
    ``count(carry)``: the iteration counter."""

    def cond(c):
        active, it = running(c), count(c)
        if min_active > 0:  # (implies that some are running: one reduction)
            return (jnp.sum(active, dtype=jnp.int32) > min_active) & (it < max_iter)
        return jnp.any(active) & (it < max_iter)

    return cond


def compacted_while(
    make: Callable, carry, m: int, running: Callable, gather: Callable, scatter: Callable
):
    """A batched ``while_loop``, compacted to ``m`` rows once no more are running.

    Arguments:
        make: ``make(rows, min_active) -> (cond, body, init)``: the loop over the rows
            ``rows`` (None: the whole batch; else the ``(m,)`` indices gathered), its
            condition stopping once no more than ``min_active`` rows run, and
            ``init(carry)``, what the carry needs before the loop (e.g. its save gate).
        carry: the loop's carry over the whole batch.
        m: the compacted batch (0: no compaction, one loop).
        running: ``running(carry)``, the ``(n,)`` rows still running.
        gather: ``gather(carry, rows)``: the carry of the rows ``rows``.
        scatter: ``scatter(carry, sub, rows)``: ``carry`` with the rows ``rows``
            replaced by those of the compacted loop's carry ``sub``.

    Returns:
        The carry after both loops.
    """
    cond, body, init = make(None, m)
    carry = jax.lax.while_loop(cond, body, init(carry))
    if not m:
        return carry
    active = running(carry)
    # the running rows; the rest of the m slots repeat a finished one
    rows = jnp.nonzero(active, size=m, fill_value=jnp.argmin(active))[0]
    cond, body, init = make(rows, 0)
    sub = jax.lax.while_loop(cond, body, init(gather(carry, rows)))
    return scatter(carry, sub, rows)
