"""The interface shared by the integrator families."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax


class AbstractSolver(eqx.Module):
    """An integrator family behind :func:`twinjax.simulate`.

    The event engine calls :meth:`integrate` once per segment between events, for
    the whole batch of patients at once.

    ``skips_saves_past_end``: whether save times past a segment's end cost nothing
    (the solver writes a save only where one falls in a step, as ``Ensemble``'s save
    gate does). False (the default, and ``Diffrax``: diffrax works through every save
    time it is given, those past the end clipped into the segment): a caller that
    marks "no save" by a time past the end should integrate without save times.

    ``step_reductions``: whether :meth:`integrate` takes ``reduce=`` (a
    :class:`~twinjax.solve.StepReduction` folded into per-patient accumulators at
    every step, returned as a fourth result: metrics without a saved trajectory).
    ``Ensemble`` yes; ``Diffrax`` no (a caller saves densely and reduces after).
    """

    skips_saves_past_end: ClassVar[bool] = False
    step_reductions: ClassVar[bool] = False

    @abc.abstractmethod
    def integrate(
        self,
        f: Callable,
        t0: jax.Array,
        t1: jax.Array,
        y0: jax.Array,
        ts: jax.Array | None,
        args,
        model,
        *,
        forward: bool = False,
    ) -> tuple[jax.Array | None, jax.Array, jax.Array]:
        """Integrate ``dy/dt = f(t, y, args)`` for a batch of patients.

        Arguments:
            f: the batched vector field: ``f(t, y, args)`` with ``t`` of shape ``(N,)``
                or ``()``, ``y`` of shape ``(N, S)`` or ``(S,)``; it broadcasts.
            t0, t1: ``(N,)`` start and end of the segment (``t1 >= t0``).
            y0: ``(N, S)`` state at ``t0``.
            ts: ``(N, T)`` save times inside ``[t0, t1]`` (clipped), or None.
            args: a pytree with leading patient axis ``N``.
            model: the model (for solver choice).
            forward: the result must support forward-mode differentiation.

        Returns:
            ``(ys, y1, status)``: ``(N, T, S)`` states at ``ts`` (None if ``ts`` is
            None), ``(N, S)`` state at ``t1``, ``(N,)`` int32 status codes.
        """

    def block_size(self, n: int, S: int | None = None) -> int | None:
        """Patients per block when a batch of ``n`` (of ``S`` states, where known)
        should be run in blocks (one after the other, for cache locality), or None to
        run it whole."""
        return None

    def init_carry(self, n, dtype):
        """Solver state carried from one segment to the next (e.g. the step size)."""
        return None

    def integrate_segment(self, f, t0, t1, y0, ts, out, lo, hi, args, model, carry):
        """Integrate one segment and merge its saves (indices ``[lo, hi)``) into ``out``.

        ``out``: ``(N, T, S)``; ``ts``: ``(N, T)`` or ``(1, T)`` (the same times for
        every patient); ``lo``, ``hi``: ``(N,)``; ``carry``: from
        :meth:`init_carry` or the previous segment. Returns
        ``(out, y1, status, carry)``. Solvers that write saves in place override this.
        """
        import jax.numpy as jnp

        ts = jnp.broadcast_to(ts, (y0.shape[0], ts.shape[-1]))  # (1, T): shared times
        ys, y1, status = self.integrate(f, t0, t1, y0, ts, args, model)
        k = jnp.arange(ts.shape[-1])[None, :]
        mask = (k >= lo[:, None]) & (k < hi[:, None])
        return jnp.where(mask[..., None], ys, out), y1, status, carry
