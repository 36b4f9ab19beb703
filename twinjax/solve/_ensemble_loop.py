"""The general step body of the step loop (``_ensemble_run.drive``) and the parts a
method supplies to it.

A method is a ``_loop_parts.Method``: its proposal of the step before the trial (the
carried step landed on the end time, ``_loop_parts.land``; Rush-Larsen passes its
controller's proposal on and chooses and lands its step from its first stage), the
trial step (``_loop_parts.Trial``), the accept rule (the adaptive methods' reject and
shrink, or "finite, else ``NONFINITE``": a fixed step and Rush-Larsen), the controller
(the next step from the error estimate), the dense output its saves are interpolated
with, and the status rule at the step's end. The body (:func:`step_body`) runs them in
that order, writes the saves behind the per-patient save gate, selects the accepted
steps and folds them into the per-step reduction, whose accumulators ride in the
carry's ``k`` slot as ``(k, acc)`` (``acc`` None without a reduction, which leaves
the carry's arrays as they were).

``solvers.Ensemble``'s methods (RK and Rosenbrock tableaus) are built in
``_ensemble_method.py``, Rush-Larsen's in ``_rush_larsen.py``; :func:`make_loop` also
hands the lean fixed-step loop (``_ensemble_lean.py``) its part.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ._ensemble_layout import col, tmap
from ._ensemble_lean import lean_body, lean_gate
from ._ensemble_method import ensemble_method
from ._ensemble_saves import savers, write_saves


def make_loop(solver, f, rows_out, t1, args, hi, ts, *, adaptive, lean, inf, reduce=None):
    """``(body, gate0)`` of the step loop (``_ensemble_run.drive``) over patients
    ``rows_out`` (their end times ``t1``, arguments ``args``, save ends ``hi`` and
    save times ``ts``, None without saves). ``lean``: the lean fixed-step body
    (``_ensemble_lean.py``), else the general one (:func:`step_body` with the
    method of ``_ensemble_method.py``, ``adaptive`` or not, with the per-step
    reduction ``reduce`` or None); ``gate0(t, idx)`` is the save gate at the start
    (None without saves): the lean loop's two scalars, or the general loop's next
    save time per patient."""
    if not lean:
        method = ensemble_method(solver, f, t1, args, adaptive, ts is not None)
        return general_loop(method, t1, rows_out, ts, hi, inf, reduce)
    saves = None if ts is None else savers(rows_out, hi, ts, inf)
    body = functools.partial(lean_body, solver, f, t1, args, saves, inf)
    return body, lambda t, idx: lean_gate(t, idx, saves)


def general_loop(method, t1, rows_out, ts, hi, inf, reduce=None):
    """``(body, gate0)`` of the step loop with the general body (:func:`step_body`)
    and ``method`` (a ``_loop_parts.Method``), for the patients ``rows_out`` (their end
    times ``t1``, save times ``ts`` and save ends ``hi``; None without saves), with the
    per-step reduction's update ``reduce`` (None: none). ``gate0(t, idx)``: the save
    gate at the start, each patient's next save time (``inf``: none; None without
    saves). Used by ``solvers.Ensemble`` (:func:`make_loop`) and Rush-Larsen."""
    saves = None if ts is None else savers(rows_out, hi, ts, inf)
    body = functools.partial(step_body, method, t1, saves, inf, reduce)
    return body, lambda t, idx: None if saves is None else saves[0](idx)


def step_body(method, t1, saves, inf, reduce, c):
    """One trial step of every running patient, accepted or rejected by the method's
    rule, its saves written from the method's dense output, the accepted steps folded
    into the per-step reduction.

    ``c``: the loop's carry ``(t, y, k, h, active, status, it, out, idx, gate)`` with
    ``k`` the pair ``(k, accumulators)``; ``t1``: the end times; ``saves``:
    ``(next_time, save_pass)`` of ``_ensemble_saves.savers`` (None without saves);
    ``reduce``: the update of a ``_reductions.StepReduction`` (None: none), called
    with every trial step after the selection of the accepted ones, as ``update(acc,
    accept, t, h, y, y_new, k, k_new, *aux)``.

    The save gate: ``gate`` is each patient's next save time (``inf`` when none is
    left; always after its ``t``, the saves up to ``t`` being written). After the step
    one comparison with the new times and one reduction over the batch decide whether
    any patient has a save in its step; only then does a branch (``lax.cond``) evaluate
    the dense output, write the saves and look the next save times up.
    """
    t, y, k, h, active, status, it, out, idx, gate = c
    k, acc = k
    tr = method.trial(t, y, k, method.propose(t, y, k, h, active), active, it)
    accept, finite, err = method.accept(tr, active)
    h_new = method.controller(tr, accept, active, h, err)
    t_new = jnp.where(accept, jnp.where(tr.last, t1, t + tr.h), t)
    if out is not None:
        t_right = jnp.where(accept, t_new, -inf)

        def saves_in_step(oi):
            o, i = write_saves(saves, *oi, t_right, method.dense(t, y, k, tr))
            return o, i, saves[0](i)

        out, idx, gate = jax.lax.cond(
            jnp.any(gate <= t_right), saves_in_step, lambda oi: (*oi, gate), (out, idx)
        )
    y_next = tmap(lambda a, b: jnp.where(col(accept, y), a, b), tr.y1, y)
    k_next = None if k is None else tmap(lambda a, b: jnp.where(col(accept, y), a, b), tr.k1, k)
    status, still = method.end(tr, accept, finite, active, h_new, t, status)
    if reduce is not None:
        red = (k, k_next) if tr.red is None else tr.red
        acc = reduce(acc, accept, t, tr.h, y, y_next, *red)
    return (t_new, y_next, (k_next, acc), h_new, still, status, it + 1, out, idx, gate)
