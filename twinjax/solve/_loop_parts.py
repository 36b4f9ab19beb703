"""The parts a method supplies to the general step body of the step loop
(``_ensemble_loop.step_body``): the :class:`Method` and its :class:`Trial`, landing a
step on a discontinuity and the end time (:func:`land`, a feature of the loop that
every method's proposal goes through), and the accept and status rule "finite, else
``NONFINITE``" that a fixed step and Rush-Larsen share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp

from ._status import Status


class Trial(NamedTuple):
    """A trial step of every patient, as a method's ``trial`` returns it."""

    h: Any  # the step tried, (N,) (0 for a patient not running)
    last: Any  # it reaches the end time
    y1: Any  # the state at its end
    k1: Any  # the derivative there (None: the method carries none)
    finite: Any  # the step is finite
    err: Any  # what the controller needs: the error estimate's norm (Ensemble's
    # adaptive methods), the controlled states at the start (Rush-Larsen), or None
    dense: Any  # what the dense output needs of the stages (None: nothing)
    red: Any  # the reduction's ``(k, k_new, *aux)`` (None: the carried k and k1)


class Method(NamedTuple):
    """The parts of a method (see ``_ensemble_loop``'s module docstring).

    ``propose(t, y, k, h, active) -> h``: what the trial gets as its step (Ensemble:
    the carried step landed on the end time; Rush-Larsen: the controller's carried
    proposal, its trial choosing the step from its first evaluation); ``trial(t, y, k,
    h, active, it) -> Trial``; ``accept(trial, active) -> (accept, finite, err)``;
    ``controller(trial, accept, active, h, err) -> h_new``; ``dense(t, y, k, trial)
    -> values(tj)``, the ``(S, N, K)`` states at save times ``tj`` ``(N, K)`` inside the
    step; ``end(trial, accept, finite, active, h_new, t, status) -> (status, still)``.
    """

    propose: Callable
    trial: Callable
    accept: Callable
    controller: Callable
    dense: Callable
    end: Callable


def land(h, t, t_end, active, t_disc=None):
    """Steps that land exactly on the discontinuity ``t_disc`` (when before it; None:
    none) and on ``t_end`` (when they would pass it); 0 for a patient not running."""
    if t_disc is not None:
        h = jnp.where(t < t_disc, jnp.minimum(h, t_disc - t), h)
    # (a step equal to the rest takes the rest: its derivative is that of t_end - t)
    rest = t_end - t
    return jnp.where(active, jnp.where(h < rest, h, rest), 0.0)


def finite_accept(trial, active):
    """The accept rule of a fixed step and of Rush-Larsen: a finite step."""
    return active & trial.finite, trial.finite, trial.err


def finite_end(hmin_tiny=None):
    """The status rule that goes with :func:`finite_accept`: a non-finite step is a
    failure (``NONFINITE``), a patient is done at its end time. ``hmin_tiny``: a
    function computing the (unused) too-small flag of the Ensemble's fixed step,
    kept so that its programs stay the same."""

    def end(trial, accept, finite, active, h_new, t, status):
        bad = active & ~finite
        if hmin_tiny is not None:
            hmin_tiny(accept, active, h_new, t)
        status = jnp.where(bad, Status.NONFINITE, status)
        return status, active & ~bad & ~(accept & trial.last)

    return end
