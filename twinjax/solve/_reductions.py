"""Per-step reductions of ``solvers.Ensemble``'s step loop: what a caller folds into
accumulators at every accepted step instead of saving a trajectory (the
circulation's per-beat extremes), and the extrema of a step's cubic Hermite
interpolant that such a reduction may use.

Both integrators of the step loop take a :class:`StepReduction` and fold it in the
general body (``_ensemble_loop.step_body``), its accumulators in the carry's ``k``
slot: ``solvers.Ensemble`` (``integrate(..., reduce=...)``) and Rush-Larsen
(``_rush_larsen.integrate(reduce=...)``), whose ``update`` gets, in the places of the
derivatives, those at the step's start and midpoint, and the midpoint's auxiliary
array (a current) after them."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class StepReduction(NamedTuple):
    """A per-step reduction for :meth:`~twinjax.solvers.Ensemble.integrate`
    (``reduce=``; solvers with ``step_reductions``).

    ``acc0``: ``(N, A)`` accumulators at the start (per patient, e.g. the start
    state's values); ``update(A, ok, t, h, y, y_new, k, k_new) -> A``, called after
    every trial step of the loop, state-major: ``A`` ``(A, N)``; ``ok`` ``(N,)``: the
    step was accepted (``update`` must leave the others' accumulators as they are);
    ``t``, ``h`` ``(N,)``: the step's start and length; ``y``, ``y_new``: the state
    at its start and end (``y_new`` is ``y`` where the step was not accepted),
    ``y[i]`` the ``(N,)`` row of state ``i`` (either layout of the loop); ``k``,
    ``k_new``: the derivatives there, the same way. The integration then returns the
    accumulators ``(N, A)`` as a fourth result.
    """

    acc0: jax.Array
    update: Callable


def hermite_extrema(y0, y1, m0, m1):
    """The smallest and largest value over a step of the cubic Hermite interpolant
    through ``y0``, ``y1`` with slopes ``m0 = h k0`` and ``m1 = h k1`` (per unit of
    the step's fraction ``theta``): its values at both ends and at the roots of its
    derivative (a quadratic) inside the step. Fourth order in ``h``, as the dense
    outputs of DOPRI5 and Rodas5P; the ends alone are second order for a smooth
    extremum inside a step. Elementwise; the fractions carry no derivative (at an
    extremum the value's derivative in ``theta`` is zero)."""
    d = y1 - y0
    b2 = 3.0 * d - 2.0 * m0 - m1
    b3 = m0 + m1 - 2.0 * d

    def value(th):
        return y0 + th * (m0 + th * (b2 + th * b3))

    # p'(theta) = 3 b3 theta^2 + 2 b2 theta + m0
    a, b, c = (jax.lax.stop_gradient(x) for x in (3.0 * b3, 2.0 * b2, m0))
    disc = b * b - 4.0 * a * c
    real = disc > 0
    sq = jnp.sqrt(jnp.where(real, disc, 0.0))
    q = -0.5 * (b + jnp.where(b >= 0, sq, -sq))  # the roots q / a and c / q

    def root(num, den):
        ok = real & (den != 0)
        r = num / jnp.where(ok, den, 1.0)
        return jnp.where(ok & (r > 0) & (r < 1), r, 0.0)  # 0: an end, already counted

    v1, v2 = value(root(q, a)), value(root(c, q))
    lo = jnp.minimum(jnp.minimum(y0, y1), jnp.minimum(v1, v2))
    hi = jnp.maximum(jnp.maximum(y0, y1), jnp.maximum(v1, v2))
    return lo, hi
