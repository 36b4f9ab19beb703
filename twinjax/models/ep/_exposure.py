"""Drug exposure from PK: EP models paced under a concentration time course.

A PK simulation (time in hours) gives the free concentration at the start of every
beat; the cell is paced beat by beat with that beat's concentration as a parameter
(beat-wise quasi-static: the concentration is constant within a beat, which is exact
to within the change of the concentration over one beat, here 1-2 s against PK time
scales of hours). The state, including the drug-bound hERG states of
:class:`~twinjax.models.ep.CiPAORd`, carries over from beat to beat, so binding and
trapping kinetics follow the exposure.

A day at CL 2000 ms is 43,200 beats. :func:`exposure_beats` can instead pace windows
of ``window`` consecutive beats at chosen sample times (e.g. hourly), each window
continuing from the state the previous one left: a quasi-static approximation that
assumes the cell follows the concentration within a window; drugs whose block
develops over hundreds of beats (slow hERG binders such as dofetilide, Ku ~ 2e-5 /ms)
lag behind the concentration more in reality than in the windows. Pace every beat
(``sample_every_h=None``) when that matters.
"""

from __future__ import annotations

import numpy as np

from ._solver import PacingResult

MS_PER_H = 3.6e6


def free_nM(conc_mg_per_L, mw_g_per_mol: float, fu: float = 1.0):
    """Free molar concentration (nM) from a total mass concentration (mg/L)."""
    return np.asarray(conc_mg_per_L, float) * fu / mw_g_per_mol * 1e6


def exposure_beats(
    times_h,
    conc_nM,
    *,
    bcl_ms: float,
    hours: float,
    sample_every_h: float | None = None,
    window: int = 1,
    start_h: float = 0.0,
):
    """Beat start times (h) and the concentration (nM) of every beat to pace.

    Arguments:
        times_h: ``(T,)`` increasing times (h) of a PK solution.
        conc_nM: ``(T,)`` or ``(N, T)`` free concentrations at ``times_h``.
        bcl_ms: cycle length (ms).
        hours: length of the exposure (h) from ``start_h``.
        sample_every_h: None: every beat of ``[start_h, start_h + hours)``; else
            windows of ``window`` beats starting every ``sample_every_h`` hours.
        window: beats per window (with ``sample_every_h``).

    Returns:
        ``(beat_times_h (B,), conc (B,) or (B, N))`` by linear interpolation.

    Raises:
        ValueError: a time outside the PK solution, or bad sizes.
    """
    t = np.asarray(times_h, float)
    c = np.asarray(conc_nM, float)
    if t.ndim != 1 or c.shape[-1] != t.shape[0] or c.ndim > 2:
        raise ValueError(f"need times (T,) and conc (T,) or (N, T), got {t.shape}, {c.shape}")
    if not (bcl_ms > 0 and hours > 0):
        raise ValueError(f"bcl_ms and hours must be positive, got {bcl_ms}, {hours}")
    beat_h = bcl_ms / MS_PER_H
    if sample_every_h is None:
        n = int(np.floor(hours / beat_h + 1e-9))
        tb = start_h + beat_h * np.arange(n)
    else:
        if not (sample_every_h > 0 and isinstance(window, int) and window >= 1):
            raise ValueError(
                f"sample_every_h must be > 0 and window an integer >= 1, got "
                f"{sample_every_h}, {window}"
            )
        starts = start_h + np.arange(0.0, hours - 1e-12, sample_every_h)
        tb = (starts[:, None] + beat_h * np.arange(window)[None, :]).reshape(-1)
    if tb.size == 0 or tb[0] < t[0] - 1e-12 or tb[-1] > t[-1] + 1e-12:
        raise ValueError(
            f"beats at {tb.min() if tb.size else start_h:g}-{tb.max() if tb.size else 0:g} h "
            f"lie outside the PK solution ({t[0]:g}-{t[-1]:g} h)"
        )
    if c.ndim == 1:
        return tb, np.interp(tb, t, c)
    return tb, np.stack([np.interp(tb, t, ci) for ci in c], axis=1)


def pace_exposure(
    model, compound: str, conc_nM, *, params=None, y0=None, solver=None
) -> PacingResult:
    """Pace ``model`` beat by beat under a per-beat free concentration of ``compound``.

    Arguments:
        model: a :class:`~twinjax.models.ep.CiPAORd` (dynamic hERG binding and Hill
            block of the other currents, :func:`~twinjax.models.ep._cipa.compound_params`,
            CiPA compound table) or an :class:`~twinjax.models.ep.ORd` /
            :class:`~twinjax.models.ep.LuoRudy1991` (pore block,
            :mod:`~twinjax.models.ep._drugs`).
        compound: a compound of the model's table.
        conc_nM: ``(B,)`` (one cell) or ``(B, N)`` (N cells) free concentrations, one
            per beat.
        params: the cells' other parameters (scalars or ``(N,)``).
        y0: initial state (default the model's).
        solver: step settings passed on.

    Returns:
        A :class:`~twinjax.models.ep.PacingResult` with per-beat biomarkers ``(B,)``
        or ``(B, N)`` and the final state.
    """
    from . import _drugs
    from ._cipa import CiPAORd, compound_params, pace_cipa
    from ._solver import pace

    c = np.asarray(conc_nM, float)
    if c.ndim not in (1, 2) or c.shape[0] < 1:
        raise ValueError(f"conc_nM must be (beats,) or (beats, N), got shape {c.shape}")
    if not np.all(np.isfinite(c)) or (c < 0).any():
        raise ValueError("conc_nM must be finite and >= 0")
    cipa = isinstance(model, CiPAORd)
    if cipa:
        compound_params(model, compound, 0.0)  # KeyError for an unknown compound
    else:
        _drugs.block_factors(compound, 0.0)
    base = dict(params or {})
    y, bios, status = y0, [], None
    for b in range(c.shape[0]):
        if cipa:
            p = compound_params(model, compound, c[b], base)
            r = pace_cipa(model, p, 1, y0=y, solver=solver)
        else:
            p = _drugs.apply_block(model, base, _drugs.block_factors(compound, c[b]))
            r = pace(model, p, 1, y0=y, solver=solver, record="last")
        y = r.state
        bios.append({k: np.asarray(v)[-1] for k, v in r.biomarkers.items()})
        st = np.asarray(r.status)
        status = st if status is None else np.maximum(status, st)
    import jax.numpy as jnp

    bio = {k: np.stack([x[k] for x in bios]) for k in bios[0]}
    return PacingResult(y, bio, jnp.asarray(status), None, None)
