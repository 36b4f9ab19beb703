"""``solvers.Diffrax``: diffrax's general solvers, vmapped over patients (the reference)."""

from __future__ import annotations

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
        solver = self.solver_for(model)
        controller = dfx.PIDController(rtol=self.rtol, atol=self.atol, dtmax=self.dtmax)
        if forward or self.adjoint == "forward":
            adjoint = dfx.ForwardMode()
        else:
            adjoint = dfx.RecursiveCheckpointAdjoint()
        term = dfx.ODETerm(lambda t, y, a: f(t, y, a))

        def one(t0, t1, y0, ts, args):
            # diffrax returns y0 unchanged, with zero steps, on a zero-length segment
            # (several events at one time, or events after the last save time).
            if ts is None:
                saveat = dfx.SaveAt(t1=True)
            else:  # diffrax saves inside [t0, t1]; the engine keeps the segment's own
                saveat = dfx.SaveAt(ts=jnp.clip(ts, t0, t1), t1=True)
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
            status = jnp.where(
                sol.result == dfx.RESULTS.successful,
                Status.OK,
                jnp.where(
                    sol.result == dfx.RESULTS.max_steps_reached,
                    Status.MAX_STEPS,
                    Status.SOLVER_FAILED,
                ),
            ).astype(jnp.int32)
            if ts is None:
                return None, sol.ys[-1], status
            return sol.ys[:-1], sol.ys[-1], status

        in_axes = (0, 0, 0, None if ts is None else 0, 0)
        return jax.vmap(one, in_axes=in_axes)(t0, t1, y0, ts, args)
