"""Glycaemic outcomes of a CGM or blood-glucose trace (international consensus metrics).

References:
    - Battelino T, Danne T, Bergenstal RM, et al. Clinical targets for continuous
      glucose monitoring data interpretation: recommendations from the international
      consensus on time in range. Diabetes Care 42:1593-1603, 2019.
    - Bergenstal RM, Beck RW, Close KL, et al. Glucose management indicator (GMI): a new
      term for estimating A1C from continuous glucose monitoring. Diabetes Care
      41:2275-2280, 2018.
    - Kovatchev BP, Cox DJ, Gonder-Frederick LA, Clarke W. Symmetrization of the blood
      glucose measurement scale and its applications. Diabetes Care 20:1655-1658, 1997.
    - Kovatchev BP, Otto E, Cox D, Gonder-Frederick L, Clarke W. Evaluation of a new
      measure of blood glucose variability in diabetes. Diabetes Care 29:2433-2438, 2006.
"""

from __future__ import annotations

import jax.numpy as jnp


def risk(bg):
    """The Kovatchev symmetrised risk of glucose values (mg/dL).

    ``f(BG) = 1.509 (ln(BG)^1.084 - 5.381)``, ``r = 10 f^2``; the low-glucose risk
    is ``r`` where ``f < 0`` and the high-glucose risk where ``f > 0``
    (Kovatchev et al. 1997).

    Returns:
        ``(rl, rh)``, arrays shaped like ``bg``.
    """
    bg = jnp.maximum(bg, 1.0)
    f = 1.509 * (jnp.log(bg) ** 1.084 - 5.381)
    r = 10.0 * f * f
    return jnp.where(f < 0, r, 0.0), jnp.where(f > 0, r, 0.0)


def outcomes(bg, *, axis: int = -1) -> dict:
    """The standard CGM outcomes of glucose traces sampled at regular times.

    Arguments:
        bg: glucose (mg/dL), regularly sampled along ``axis`` (e.g. ``(N, T)`` for a
            cohort).
        axis: the time axis.

    Returns:
        ``{name: array}`` reduced over ``axis``: ``TIR`` (% of time 70-180 mg/dL),
        ``TBR70`` (% < 70), ``TBR54`` (% < 54), ``TAR180`` (% > 180), ``TAR250``
        (% > 250), ``mean`` (mg/dL), ``SD`` (mg/dL), ``CV`` (%, SD / mean), ``GMI``
        (%, 3.31 + 0.02392 mean, Bergenstal et al. 2018), ``LBGI``, ``HBGI`` and
        ``BGRI = LBGI + HBGI`` (Kovatchev et al. 1997, 2006). Every outcome of a
        trace holding a NaN (a failed patient's) is NaN.
    """
    bg = jnp.asarray(bg)
    failed = jnp.any(jnp.isnan(bg), axis=axis)

    def pct(mask):
        return 100.0 * jnp.mean(mask.astype(bg.dtype), axis=axis)

    mean = jnp.mean(bg, axis=axis)
    sd = jnp.std(bg, axis=axis)
    rl, rh = risk(bg)
    lbgi = jnp.mean(rl, axis=axis)
    hbgi = jnp.mean(rh, axis=axis)
    out = {
        "TIR": pct((bg >= 70.0) & (bg <= 180.0)),
        "TBR70": pct(bg < 70.0),
        "TBR54": pct(bg < 54.0),
        "TAR180": pct(bg > 180.0),
        "TAR250": pct(bg > 250.0),
        "mean": mean,
        "SD": sd,
        "CV": 100.0 * sd / mean,
        "GMI": 3.31 + 0.02392 * mean,
        "LBGI": lbgi,
        "HBGI": hbgi,
        "BGRI": lbgi + hbgi,
    }
    return {k: jnp.where(failed, jnp.nan, v) for k, v in out.items()}
