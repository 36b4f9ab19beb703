"""Likelihood of censored observations (below / above the limits of quantification).

A censored record says only that the (transformed) observation ``Y ~ N(m, s^2)`` lies
in an interval ``(lo, hi)``: below the LLOQ (``lo = -inf, hi = LLOQ``: Beal's M3),
above an upper limit (``lo = ULOQ, hi = +inf``), or between two limits (nlmixr2's and
Monolix's ``LIMIT``; Beal's M4 has ``lo = 0``). Its contribution to ``-2 log L`` is
``-2 log [Phi((hi - m)/s) - Phi((lo - m)/s)]``. M4 also conditions every record of a
positive quantity on ``Y > 0``: each record adds ``+2 log Phi(m/s)``.

Everything here is elementwise and written so that its derivatives stay finite in both
tails (``log_ndtr`` rather than ``log(Phi)``; an interval entirely in the upper tail is
reflected into the lower one).

References:
    - Beal SL. Ways to fit a PK model with some data below the quantification limit.
      J Pharmacokinet Pharmacodyn 28:481-504, 2001 (methods M1-M7; M3 and M4).
    - Ahn JE, Karlsson MO, Dunne A, Ludden TM. Likelihood based approaches to handling
      data below the quantification limit using NONMEM VI. J Pharmacokinet
      Pharmacodyn 35:401-421, 2008 (M3 needs the Laplacian method in NONMEM).
    - nlmixr2 "Censoring" vignette and Monolix "Censored data" documentation: ``CENS``
      1 = left-censored with DV the limit, -1 = right-censored, ``LIMIT`` the other end.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import log_ndtr

__all__ = ["CENSORING", "censored_nll", "log_ndtr_diff"]

#: ``fit(..., censoring=)`` values: M3 (likelihood of the interval), M4 (M3 with every
#: record conditioned on a positive value), ``"drop"`` (Beal's M1: censored records left
#: out, the biased reference).
CENSORING = ("m3", "m4", "drop")


def log_ndtr_diff(a, b):
    """``log(Phi(b) - Phi(a))`` for finite ``a < b``, accurate in both tails.

    With ``a > 0`` the interval is reflected (``Phi(b) - Phi(a) = Phi(-a) - Phi(-b)``)
    so that both ends lie in the lower tail, where ``log_ndtr`` keeps full precision.
    """
    flip = a > 0
    lo = jnp.where(flip, -b, a)
    hi = jnp.where(flip, -a, b)
    lb = log_ndtr(hi)
    la = log_ndtr(lo)
    return lb + _log1mexp(la - lb)


def _log1mexp(x):
    """``log(1 - exp(x))`` for ``x < 0`` (Maechler 2012: expm1 near 0, log1p below)."""
    near = x > -0.6931471805599453
    xn = jnp.where(near, x, -1.0)
    xf = jnp.where(near, -1.0, x)
    return jnp.where(near, jnp.log(-jnp.expm1(xn)), jnp.log1p(-jnp.exp(xf)))


def censored_nll(m, s, lo, hi):
    """``-2 log P(lo < Y < hi)`` for ``Y ~ N(m, s^2)``, elementwise.

    Arguments:
        m, s: mean and SD (arrays of one shape).
        lo, hi: the interval; ``lo`` may be ``-inf`` (below ``hi``: M3) or ``hi``
            ``+inf`` (above ``lo``), not both. Where both are finite, ``lo < hi``.

    Returns:
        The contributions (finite wherever the probability is positive in floating
        point), with finite derivatives in ``m`` and ``s``.
    """
    lo_inf = ~jnp.isfinite(lo)
    hi_inf = ~jnp.isfinite(hi)
    # finite stand-ins where an end is infinite (their branch is not selected), so no
    # branch produces inf/NaN that would leak into derivatives through jnp.where
    hi_f = jnp.where(hi_inf, jnp.where(lo_inf, 0.0, lo) + 1.0, hi)
    lo_f = jnp.where(lo_inf, hi_f - 1.0, lo)
    za = (lo_f - m) / s
    zb = (hi_f - m) / s
    below = log_ndtr(zb)  # P(Y < hi)
    above = log_ndtr(-za)  # P(Y > lo)
    both = log_ndtr_diff(za, zb)
    return -2.0 * jnp.where(lo_inf, below, jnp.where(hi_inf, above, both))
