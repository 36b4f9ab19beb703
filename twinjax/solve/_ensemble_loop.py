"""The step loop of ``solvers.Ensemble``: its general body (every method: the adaptive
ones with their error control, and a fixed step on the stacked layout or with a
per-step reduction), and :func:`make_loop`, which also hands the lean fixed-step loop
(``_ensemble_lean.py``) its part. The loop itself, its condition and end status are
``_ensemble_run.drive``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ._ensemble_layout import all_finite, col, rms, stacked, tmap
from ._ensemble_lean import lean_body, lean_gate
from ._ensemble_saves import savers, write_saves
from ._ensemble_step import dense, dense_data, step
from ._status import Status
from ._tableaus import RosenbrockTableau


def make_loop(solver, f, rows_out, t1, args, hi, ts, *, adaptive, lean, inf, reduce=None):
    """``(body, gate0)`` of the step loop (``_ensemble_run.drive``) over patients
    ``rows_out`` (their end times ``t1``, arguments ``args``, save ends ``hi`` and
    save times ``ts``, None without saves). ``lean``: the lean fixed-step body
    (``_ensemble_lean.py``), else the general one (:func:`step_body`, ``adaptive`` or
    not, with the per-step reduction ``reduce`` or None); ``gate0(t, idx)`` is the
    save gate at the start (None without saves): the lean loop's two scalars, or the
    general loop's next save time per patient."""
    saves = None if ts is None else savers(rows_out, hi, ts, inf)

    if lean:
        body = functools.partial(lean_body, solver, f, t1, args, saves, inf)
    else:
        body = functools.partial(step_body, solver, f, t1, args, adaptive, saves, inf, reduce)

    def gate0(t, idx):
        if lean:
            return lean_gate(t, idx, saves)
        # the general loop's save gate: each patient's next save time (inf: none)
        return None if saves is None else saves[0](idx)

    return body, gate0


def step_body(solver, f, t1, args, adaptive, saves, inf, reduce, c):
    """One trial step of every running patient, accepted or rejected (the adaptive
    methods' error control) and its saves written from the step's dense output.

    ``c``: the loop's carry ``(t, y, k, h, active, status, it, out, idx, gate)``
    (with a reduction ``k`` is the pair ``(k, accumulators)``); ``saves``:
    ``(next_time, save_pass)`` of ``_ensemble_saves.savers`` (None without saves);
    ``reduce``: the update of a ``_reductions.StepReduction`` (None: none), called
    with every trial step after the selection of the accepted ones.

    The save gate: ``gate`` is each patient's next save time (``inf`` when none is
    left; always after its ``t``, the saves up to ``t`` being written). After the step
    one comparison with the new times and one reduction over the batch decide whether
    any patient has a save in its step; only then does a branch (``lax.cond``) evaluate
    the dense output, write the saves and look the next save times up. On CPU the
    trial step is then computed in a branch of its own (as on the rows layout, see
    below), so that its results are computed once and read by both the bookkeeping
    and the save branch: the circulation's beat (16 states, DOPRI5) with saves that
    none of its steps holds costs what it costs without saves to within about 10 %
    (2 patients: 2x before; ``benchmarks/results/circulation_twins_*.json``).
    """
    tab = solver.tableau
    t, y, k, h, active, status, it, out, idx, gate = c
    if reduce is not None:
        k, acc = k
    h_eff = jnp.where(active, jnp.minimum(h, t1 - t), 0.0)
    last = h_eff >= t1 - t
    # what the dense output needs of the stages (DOPRI5's, Rodas5P's)
    keep_ks = out is not None and (isinstance(tab, RosenbrockTableau) or tab.dense is not None)

    def trial(_):
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
        """The other branch of the conditional below, never taken: zeros shaped as
        ``trial``'s results (a second copy of the step would double its compile)."""
        z = tmap(jnp.zeros_like, y)
        kd = None
        if keep_ks:
            rosenbrock = isinstance(tab, RosenbrockTableau)
            kd = [jnp.zeros_like(stacked(y)) for _ in tab.H] if rosenbrock else z
        en = jnp.zeros(t.shape, stacked(y).dtype) if adaptive else None
        return z, tmap(jnp.zeros_like, k), jnp.zeros(t.shape, bool), en, kd

    if (isinstance(y, tuple) or out is not None) and jax.default_backend() == "cpu":
        # XLA:CPU fuses an elementwise producer into every consumer, so a
        # step consumed by the nine parts of the carry (t, rows of y and
        # k, h, active, status) was computed nine times over. The branch
        # of a conditional is its own computation whose results are
        # materialised: the step is computed once, the bookkeeping reads
        # it (Lorenz RK4, N = 65,536: 44 -> 17 ns per trajectory-step).
        # The predicate is always true but unknown to XLA; the other branch
        # returns zeros (the same step in both compiled it twice). With saves (either
        # layout) the same: the save branch below reads the step too, and without
        # this its results were computed again for it (the circulation's beat,
        # stacked layout, 2 patients: 1.8x the CPU time of the beat without saves,
        # 1.1x with).
        y1, k_end, finite, en, kd = jax.lax.cond(it >= 0, trial, never, None)
    else:
        y1, k_end, finite, en, kd = trial(None)
    if adaptive:
        finite = finite & jnp.isfinite(en)
        en = jnp.where(finite, en, jnp.inf)
        accept = active & (en <= 1.0)
        # The step factor needs no more than float32: XLA:CPU vectorises
        # the float32 power; the float64 one is a scalar call per patient.
        en32 = jnp.maximum(en, 1e-10).astype(jnp.float32)
        fac = solver.safety * jnp.power(en32, -1.0 / tab.order)
        fac = jnp.clip(
            fac.astype(en.dtype),
            solver.factormin,
            jnp.where(accept, solver.factormax, 1.0),
        )
        # The controller's choice of step carries no derivative (as in
        # diffrax): differentiating it gives the derivative of the step
        # pattern, which jumps between accepted/rejected patterns and made
        # Gauss-Newton Jacobians wrong by orders of magnitude.
        h_new = jax.lax.stop_gradient(jnp.where(active, h_eff * fac, h))
        # keep the step as proposed when it was only clipped to hit t1
        h_new = jnp.where(accept & last, jnp.maximum(h_new, h), h_new)
    else:
        accept = active & finite
        h_new = h
    t_new = jnp.where(accept, jnp.where(last, t1, t + h_eff), t)
    if out is not None:
        t_right = jnp.where(accept, t_new, -inf)

        def saves_in_step(oi):
            safe_h = jnp.where(h_eff > 0, h_eff, 1.0)

            def values(tj):
                theta = jnp.clip((tj - t[:, None]) / safe_h[:, None], 0.0, 1.0)
                theta = jnp.where(h_eff[:, None] > 0, theta, 1.0)
                Y0, Y1, K0, K1 = (stacked(a) for a in (y, y1, k, k_end))
                kd_ = kd if isinstance(tab, RosenbrockTableau) or kd is None else stacked(kd)
                return dense(tab, theta, Y0, Y1, K0, K1, h_eff, kd_)

            o, i = write_saves(saves, *oi, t_right, values)
            return o, i, saves[0](i)

        out, idx, gate = jax.lax.cond(
            jnp.any(gate <= t_right), saves_in_step, lambda oi: (*oi, gate), (out, idx)
        )
    y_next = tmap(lambda a, b: jnp.where(col(accept, y), a, b), y1, y)
    k_next = tmap(lambda a, b: jnp.where(col(accept, y), a, b), k_end, k)
    bad = active & ~finite
    tiny = active & ~accept & (h_new < solver.hmin * jnp.maximum(jnp.abs(t), 1.0))
    if adaptive:
        # A NaN or infinite trial step is rejected and the step shrunk (as
        # diffrax does); while running, status says whether the last step
        # tried was non-finite: that is the cause if the patient fails.
        status = jnp.where(active, jnp.where(bad, Status.NONFINITE, 0), status)
        status = jnp.where(tiny & ~bad, Status.STEP_TOO_SMALL, status)
        still = active & ~tiny & ~(accept & last)
    else:  # a fixed step cannot shrink: a non-finite step is a failure
        status = jnp.where(bad, Status.NONFINITE, status)
        still = active & ~bad & ~(accept & last)
    if reduce is not None:
        k_next = (k_next, reduce(acc, accept, t, h_eff, y, y_next, k, k_next))
    return (t_new, y_next, k_next, h_new, still, status, it + 1, out, idx, gate)
