"""``solvers.Ensemble``'s methods (the RK and Rosenbrock tableaus of
``_tableaus.py``) as a :class:`~twinjax.solve._loop_parts.Method` of the general
step body: the carried step landed on the end time, the trial step with its error
estimate, the adaptive accept rule and controller (or a fixed step's "finite, else
``NONFINITE``"), and the tableau's dense output."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._ensemble_layout import all_finite, rms, stacked, tmap
from ._ensemble_step import dense, dense_data, step
from ._loop_parts import Method, Trial, finite_accept, finite_end, land
from ._status import Status
from ._tableaus import RosenbrockTableau


def ensemble_method(solver, f, t1, args, adaptive, saving):
    """The :class:`Method` of the ``Ensemble`` ``solver`` (its tableau) for the field
    ``f`` with arguments ``args`` and end times ``t1``; ``saving``: the loop writes
    saves (the trial step then keeps what the dense output needs of its stages).

    On CPU the trial step is computed in a branch of its own (a ``lax.cond`` whose
    predicate is always true but unknown to XLA) on the rows layout and with saves, so
    that its results are computed once and read by both the bookkeeping and the save
    branch: XLA:CPU fuses an elementwise producer into every consumer, so a step
    consumed by the nine parts of the carry (t, rows of y and k, h, active, status)
    was computed nine times over; a branch's results are materialised (Lorenz RK4,
    N = 65,536: 44 -> 17 ns per trajectory-step). With saves the save branch reads the
    step too, and without this its results were computed again for it (the
    circulation's beat, stacked layout, 2 patients: 1.8x the CPU time of the beat
    without saves, 1.1x with; to within about 10 % of the beat without saves,
    ``benchmarks/results/circulation_twins_*.json``).
    """
    tab = solver.tableau
    rosenbrock = isinstance(tab, RosenbrockTableau)
    # what the dense output needs of the stages (DOPRI5's, Rodas5P's)
    keep_ks = saving and (rosenbrock or tab.dense is not None)

    def propose(t, y, k, h, active):
        return land(h, t, t1, active)

    def trial(t, y, k, h_eff, active, it):
        last = h_eff >= t1 - t

        def run(_):
            """The trial step and what the controller needs of it."""
            y1, k_end, err, ks = step(tab, f, t, y, k, h_eff, args)
            if k_end is None:
                k_end = f(t + h_eff, y1, args)
            finite = all_finite(y1, k_end)
            en = None
            if adaptive:
                en = rms(
                    tmap(
                        lambda e, a, b: (
                            e / (solver.atol + solver.rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)))
                        ),
                        err,
                        y,
                        y1,
                    )
                )
            return y1, k_end, finite, en, (dense_data(tab, ks) if keep_ks else None)

        def never(_):
            """The other branch, never taken: zeros shaped as ``run``'s results (a
            second copy of the step would double its compile)."""
            z = tmap(jnp.zeros_like, y)
            kd = None
            if keep_ks:
                kd = [jnp.zeros_like(stacked(y)) for _ in tab.H] if rosenbrock else z
            en = jnp.zeros(t.shape, stacked(y).dtype) if adaptive else None
            return z, tmap(jnp.zeros_like, k), jnp.zeros(t.shape, bool), en, kd

        if (isinstance(y, tuple) or saving) and jax.default_backend() == "cpu":
            y1, k_end, finite, en, kd = jax.lax.cond(it >= 0, run, never, None)
        else:
            y1, k_end, finite, en, kd = run(None)
        return Trial(h_eff, last, y1, k_end, finite, en, kd, None)

    def accept(tr, active):
        if not adaptive:
            return finite_accept(tr, active)
        finite = tr.finite & jnp.isfinite(tr.err)
        en = jnp.where(finite, tr.err, jnp.inf)
        return active & (en <= 1.0), finite, en

    def controller(tr, accept, active, h, en):
        if not adaptive:
            return h
        # The step factor needs no more than float32: XLA:CPU vectorises the
        # float32 power; the float64 one is a scalar call per patient.
        en32 = jnp.maximum(en, 1e-10).astype(jnp.float32)
        fac = solver.safety * jnp.power(en32, -1.0 / tab.order)
        fac = jnp.clip(
            fac.astype(en.dtype),
            solver.factormin,
            jnp.where(accept, solver.factormax, 1.0),
        )
        # The controller's choice of step carries no derivative (as in diffrax):
        # differentiating it gives the derivative of the step pattern, which jumps
        # between accepted/rejected patterns and made Gauss-Newton Jacobians wrong
        # by orders of magnitude.
        h_new = jax.lax.stop_gradient(jnp.where(active, tr.h * fac, h))
        # keep the step as proposed when it was only clipped to hit t1
        return jnp.where(accept & tr.last, jnp.maximum(h_new, h), h_new)

    def dense_out(t, y, k, tr):
        h_eff = tr.h
        safe_h = jnp.where(h_eff > 0, h_eff, 1.0)

        def values(tj):
            theta = jnp.clip((tj - t[:, None]) / safe_h[:, None], 0.0, 1.0)
            theta = jnp.where(h_eff[:, None] > 0, theta, 1.0)
            Y0, Y1, K0, K1 = (stacked(a) for a in (y, tr.y1, k, tr.k1))
            kd = tr.dense
            kd_ = kd if rosenbrock or kd is None else stacked(kd)
            return dense(tab, theta, Y0, Y1, K0, K1, h_eff, kd_)

        return values

    def tiny(accept, active, h_new, t):
        return active & ~accept & (h_new < solver.hmin * jnp.maximum(jnp.abs(t), 1.0))

    def adaptive_end(tr, accept, finite, active, h_new, t, status):
        # A NaN or infinite trial step is rejected and the step shrunk (as diffrax
        # does); while running, status says whether the last step tried was
        # non-finite: that is the cause if the patient fails.
        bad = active & ~finite
        small = tiny(accept, active, h_new, t)
        status = jnp.where(active, jnp.where(bad, Status.NONFINITE, 0), status)
        status = jnp.where(small & ~bad, Status.STEP_TOO_SMALL, status)
        return status, active & ~small & ~(accept & tr.last)

    end = adaptive_end if adaptive else finite_end(tiny)
    return Method(propose, trial, accept, controller, dense_out, end)
