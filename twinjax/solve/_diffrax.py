"""``solvers.Diffrax``: diffrax's general solvers, vmapped over patients (the reference)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax as dfx
import jax
import jax.numpy as jnp

from ._base import AbstractSolver
from ._status import Status

_SOLVERS = {
    "tsit5": dfx.Tsit5,
    "dopri5": dfx.Dopri5,
    "dopri8": dfx.Dopri8,
    "kvaerno5": dfx.Kvaerno5,
    "kvaerno3": dfx.Kvaerno3,
    "bosh3": dfx.Bosh3,
}


class Diffrax(AbstractSolver):
    """diffrax integration with adaptive PID step-size control.

    Arguments:
        method: ``"auto"`` (Tsit5, or Kvaerno5 when the model is marked stiff), a name
            from ``"tsit5", "dopri5", "dopri8", "kvaerno5", "kvaerno3", "bosh3"``, or a
            diffrax solver instance.
        rtol, atol: relative and absolute tolerances.
        max_steps: maximum number of steps per segment between events.
        dtmax: largest step (None: unbounded). Useful when an input changes within a
            segment (e.g. periodic forcing).
        adjoint: ``"checkpoint"`` (reverse-mode gradients, the default) or
            ``"forward"`` (forward-mode ``jvp``/``jacfwd``, as used by Gauss-Newton fits).
        hmin: smallest step relative to ``max(|t|, 1)``: a rejected step that would go
            below it stops the patient with ``STEP_TOO_SMALL`` (as ``solvers.Ensemble``).

    Patients are integrated with ``jax.vmap`` over ``diffeqsolve`` with
    ``throw=False``, so one failing patient is flagged by its status code and does
    not stop the others.
    """

    method: str | dfx.AbstractSolver = "auto"
    rtol: float = 1e-6
    atol: float = 1e-9
    max_steps: int = 100_000
    dtmax: float | None = None
    adjoint: str = "checkpoint"
    hmin: float = 1e-12

    def __check_init__(self):
        if isinstance(self.method, str) and self.method not in (*_SOLVERS, "auto"):
            raise ValueError(
                f"Diffrax method {self.method!r} unknown; use 'auto' or one of {list(_SOLVERS)}"
            )
        if self.adjoint not in ("checkpoint", "forward"):
            raise ValueError(f"adjoint must be 'checkpoint' or 'forward', got {self.adjoint!r}")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"tolerances must be positive, got rtol={self.rtol} atol={self.atol}")

    def solver_for(self, model) -> dfx.AbstractSolver:
        if isinstance(self.method, dfx.AbstractSolver):
            return self.method
        if self.method == "auto":
            return dfx.Kvaerno5() if getattr(model, "stiff", False) else dfx.Tsit5()
        return _SOLVERS[self.method]()

    def integrate(self, f, t0, t1, y0, ts, args, model, *, forward=False):
        return self._solve(f, t0, t1, y0, ts, args, model, forward, None)

    def init_carry(self, n, dtype):
        return jnp.zeros((n,), bool)  # the patients that failed in an earlier segment

    def integrate_segment(self, f, t0, t1, y0, ts, out, lo, hi, args, model, carry):
        """As the base class, but a patient that failed in an earlier segment is not
        integrated again: its first failure's code is the one reported."""
        ts = jnp.broadcast_to(ts, (y0.shape[0], ts.shape[-1]))  # (1, T): shared times
        ys, y1, status = self._solve(f, t0, t1, y0, ts, args, model, False, carry)
        k = jnp.arange(ts.shape[-1])[None, :]
        mask = (k >= lo[:, None]) & (k < hi[:, None])
        return jnp.where(mask[..., None], ys, out), y1, status, carry | (status != Status.OK)

    def _solve(self, f, t0, t1, y0, ts, args, model, forward, skip):
        solver = self.solver_for(model)
        controller = _Guarded.around(
            dfx.PIDController(rtol=self.rtol, atol=self.atol, dtmax=self.dtmax), self.hmin
        )
        if forward or self.adjoint == "forward":
            adjoint = dfx.ForwardMode()
        else:
            adjoint = dfx.RecursiveCheckpointAdjoint()
        term = dfx.ODETerm(lambda t, y, a: f(t, y, a))

        def one(t0, t1, y0, ts, args, skip):
            # A start from a non-finite state or derivative is not integrated (diffrax
            # would pick a NaN first step and spin until max_steps): NONFINITE, as the
            # Ensemble solver. A patient that failed before (skip) is not integrated.
            start_ok = jnp.all(jnp.isfinite(y0)) & jnp.all(jnp.isfinite(f(t0, y0, args)))
            run = start_ok & ~skip
            t1 = jnp.where(run, t1, t0)
            y0 = jnp.where(run, y0, jnp.zeros_like(y0))
            # diffrax returns y0 unchanged, with zero steps, on a zero-length segment
            # (several events at one time, or events after the last save time).
            if ts is None:
                saveat = dfx.SaveAt(t1=True, controller_state=True)
            else:  # diffrax saves inside [t0, t1]; the engine keeps the segment's own
                saveat = dfx.SaveAt(ts=jnp.clip(ts, t0, t1), t1=True, controller_state=True)
            sol = dfx.diffeqsolve(
                term,
                solver,
                t0,
                t1,
                None,
                y0,
                args=args,
                saveat=saveat,
                stepsize_controller=controller,
                max_steps=self.max_steps,
                adjoint=adjoint,
                throw=False,
            )
            nonfinite = sol.controller_state[1]  # the last step tried was NaN or infinite
            r = sol.result
            status = jnp.select(
                [
                    r == dfx.RESULTS.successful,
                    nonfinite,
                    r == dfx.RESULTS.max_steps_reached,
                    r == dfx.RESULTS.dt_min_reached,
                ],
                [Status.OK, Status.NONFINITE, Status.MAX_STEPS, Status.STEP_TOO_SMALL],
                Status.SOLVER_FAILED,
            )
            status = jnp.where(
                skip, Status.OK, jnp.where(start_ok, status, Status.NONFINITE)
            ).astype(jnp.int32)
            ys = jnp.where(run, sol.ys, jnp.nan)
            if ts is None:
                return None, ys[-1], status
            return ys[:-1], ys[-1], status

        n = y0.shape[0]
        skip = jnp.zeros((n,), bool) if skip is None else skip
        in_axes = (0, 0, 0, None if ts is None else 0, 0, 0)
        return jax.vmap(one, in_axes=in_axes)(t0, t1, y0, ts, args, skip)


class _Guarded(dfx.AbstractAdaptiveStepSizeController):
    """A PID controller that also records whether the last step tried was NaN or
    infinite (the cause of a failure, see :class:`Status`) and stops the solve with
    ``dt_min_reached`` once a rejected step proposes a step below
    ``hmin * max(|t|, 1)`` (as ``solvers.Ensemble``)."""

    inner: dfx.PIDController
    hmin: float
    rtol: Any  # the inner controller's (implicit solvers read them from here)
    atol: Any
    norm: Callable

    @classmethod
    def around(cls, inner: dfx.PIDController, hmin: float) -> _Guarded:
        return cls(inner=inner, hmin=hmin, rtol=inner.rtol, atol=inner.atol, norm=inner.norm)

    def wrap(self, direction):
        return _Guarded.around(self.inner.wrap(direction), self.hmin)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        t, state = self.inner.init(terms, t0, t1, y0, dt0, args, func, error_order)
        return t, (state, jnp.asarray(False))

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        keep, next_t0, next_t1, jump, state, result = self.inner.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state[0]
        )
        leaves = jax.tree.leaves((y1_candidate, y_error))
        nonfinite = ~jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in leaves]))
        tiny = ~keep & (next_t1 - next_t0 < self.hmin * jnp.maximum(jnp.abs(t0), 1.0))
        result = dfx.RESULTS.where(
            (result == dfx.RESULTS.successful) & tiny, dfx.RESULTS.dt_min_reached, result
        )
        return keep, next_t0, next_t1, jump, (state, nonfinite), result
