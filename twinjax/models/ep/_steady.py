"""Pacing to a periodic steady state: beats until the beat-to-beat change is small.

The beat map ``G`` (the state at the start of a beat to the state one beat later, the
Rush-Larsen loop of :mod:`._solver`) is iterated per cell with the shared
periodic-steady-state solver :func:`twinjax.solve._periodic.solve_fixed_point`
(``method="plain"``: the beat-by-beat pacing a cardiac modeller runs, each cell
stopping on its own; or Anderson-accelerated), and one more beat at each cell's result
gives its biomarkers (``final=True``: one copy of the beat loop in the compiled program).

ORd, 8 population models (sigma 0.3) from the shipped 1 Hz state, ``tol`` 1e-5
(2026-11-30): plain 490-743 beats per cell, Anderson 36-71; 3000 further plain beats
from the plain result moved Na_i by up to 0.19 % (a per-beat change below ``tol`` still
leaves a slow drift); the Anderson result was closer to that end point for 7 of the 8
cells (largest difference 0.15 %).

Convergence: the largest relative change of a state over one beat,
``|G(x) - x| / (|x0| + 1e-6)`` (relative to the start state; the floor keeps gates
near 0 from dominating), below ``tol``. A cell still changing after ``max_beats``
beats gets ``Status.NOT_CONVERGED``; a failed beat keeps the loop's code.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from ...solve._batch import unbatch
from ...solve._periodic import solve_fixed_point
from ._solver import PacingResult, RushLarsen, batched_inputs, beat

_FLOOR = 1e-6  # residual scale 1 / (|x0| + _FLOOR)


@eqx.filter_jit
def _steady(model, solver, p, y0, tol, max_beats, method):
    names = tuple(model.state_names)
    x0 = jnp.stack([y0[k] for k in names], axis=-1)  # (N, D)

    def G(x, active, final):
        y = {k: x[:, i] for i, k in enumerate(names)}
        y1, bio, status, _ = beat(model, solver, p, y, None)
        return jnp.stack([y1[k] for k in names], axis=-1), status, bio

    fp = solve_fixed_point(
        G,
        x0,
        method=method,
        tol=tol,
        max_iter=max_beats,
        scale=1.0 / (jnp.abs(x0) + _FLOOR),
        final=True,
    )
    y = {k: fp.x[:, i] for i, k in enumerate(names)}
    status = jnp.maximum(fp.status, fp.final_status).astype(jnp.int32)
    return y, fp.final, status, fp.iterations, fp.residual


def pace_to_steady_state(
    model,
    params=None,
    *,
    y0=None,
    tol: float = 1e-6,
    max_beats: int = 1000,
    method: str = "plain",
    solver: RushLarsen | None = None,
    dtype=None,
) -> PacingResult:
    """Pace every cell until its state repeats from beat to beat (to ``tol``).

    Arguments:
        model: a cell model (:class:`~twinjax.models.ep.ORd`, ...).
        params: ``{name: value}`` (scalars or ``(N,)`` arrays), as for :func:`pace`.
        y0: start state (default ``model.init(params)``).
        tol: largest relative change of any state over one beat,
            ``|y(beat k+1) - y(beat k)| / (|y0| + 1e-6)``, at which a cell stops.
        max_beats: most beats per cell before ``Status.NOT_CONVERGED``.
        method: ``"plain"`` (beat after beat, default) or ``"anderson"`` (Anderson
            acceleration of the beat map, memory 4: fewer beats for slow ionic drifts;
            the result is then a fixed point of the map, not the end of a beat
            sequence).
        solver: the :class:`RushLarsen` settings.
        dtype: floating dtype.

    Returns:
        A :class:`PacingResult`: ``state`` the steady state (the start of the steady
        beat), ``biomarkers`` ``{name: (1, N)}`` of one more beat from it (with
        ``beats``, the beats paced to reach it, and ``residual``, the last relative
        change), ``status`` 0, ``Status.NOT_CONVERGED`` or a failed beat's code.

    Raises:
        ValueError: ``tol`` not positive, ``max_beats`` below 1, an unknown ``method``,
            or invalid parameters.
    """
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    if int(max_beats) < 1:
        raise ValueError(f"max_beats must be >= 1, got {max_beats}")
    if method not in ("plain", "anderson"):
        raise ValueError(f"method must be 'plain' or 'anderson', got {method!r}")
    solver = solver or RushLarsen()
    p, y0, n = batched_inputs(model, params, y0, dtype)
    dt = p["BCL"].dtype
    y, bio, status, beats, res = _steady(
        model, solver, p, y0, jnp.asarray(tol, dt), jnp.asarray(max_beats, jnp.int32), method
    )
    bio = {**bio, "beats": beats, "residual": res}
    bio = {k: v[None] for k, v in bio.items()}
    y, status = unbatch((y, status), n)
    if n is None:
        bio = {k: v[:, 0] for k, v in bio.items()}
    return PacingResult(y, bio, status, None, None)
