"""SAEM's estimated covariate coefficients (part of :mod:`._saem`): the mu-referenced
design ``mu + C_i beta`` (checked and built before anything compiles) and the
generalised least-squares M-step of ``(mu, beta)``."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..population import Categorical, Exponential, Population, Power
from ._nlme import covariate_model


class CoefficientDesign(eqx.Module):
    """Estimated covariate coefficients of a mu-referenced model: subject ``i``'s
    prior mean is ``mu + C_i beta`` with ``C`` ``(N, k, n_beta)`` (``C[i, j, l]`` the
    covariate column of coefficient ``l`` on IIV parameter ``j``: ``log(x / ref)``
    for a power, ``x - ref`` for an exponential, an indicator for a category) and
    ``beta`` the coefficients on the log-factor scale (a power's / exponential's
    theta; the log of a categorical factor), kept inside ``[lo, hi]``."""

    C: jax.Array  # (N, k, n_beta)
    lo: jax.Array  # (n_beta,)
    hi: jax.Array  # (n_beta,)
    #: bounds of the typical values ``mu`` on the transformed scale ``(k,)`` (``-inf``
    #: / ``inf``: none; ``saem(bounds=)``)
    mu_lo: jax.Array | None = None
    mu_hi: jax.Array | None = None


def prior_mean(mu, beta, D: CoefficientDesign, R: int):
    """The prior mean of every chain's latent: ``mu`` ``(k,)`` without estimated
    coefficients, else ``mu + C_i beta`` ``(R N, k)`` (chains one copy after another)."""
    if D.C.shape[-1] == 0:
        return mu
    m = mu[None] + jnp.einsum("nkl,l->nk", D.C, beta)
    return jnp.tile(m, (R, 1))


def pinned_solve(A, b, pin, val):
    """Solve ``A x = b`` with the components where ``pin`` is set held at ``val``."""
    n = A.shape[0]
    eye = jnp.eye(n, dtype=A.dtype)
    A2 = jnp.where(pin[:, None], eye, A)
    b2 = jnp.where(pin, val, b)
    return jnp.linalg.solve(A2, b2)


def gls(s1, omega, est, mu_fixed, beta_prev, D: CoefficientDesign):
    """M-step of ``(mu, beta)``: the generalised least-squares regression of the
    subjects' stochastic approximations ``s1_i ~ E[z_i]`` on their designs
    ``X_i = [I_k, C_i]``, weight ``Omega^-1`` (the previous iteration's: for a diagonal
    Omega the regression splits into one ordinary least squares per parameter, and
    Omega drops out). Typical values not estimated stay at ``mu_fixed``; a coefficient
    or typical value outside its bounds is clipped onto them and the other components
    re-solved given it, then clipped once more. This is the bound-constrained least
    squares when the components held are exactly the active set (one bound active:
    always); a component held in the first pass whose bound is no longer active once
    another is held stays on its bound (no active-set release)."""
    N, k, nb = D.C.shape
    dt = s1.dtype
    X = jnp.concatenate([jnp.broadcast_to(jnp.eye(k, dtype=dt)[None], (N, k, k)), D.C], -1)
    oinv = jnp.linalg.inv(omega)
    A = jnp.einsum("nkp,kl,nlq->pq", X, oinv, X)
    b = jnp.einsum("nkp,kl,nl->p", X, oinv, s1)
    fixed = jnp.concatenate([~est, jnp.zeros((nb,), bool)])
    val = jnp.concatenate([mu_fixed, beta_prev])
    th = pinned_solve(A, b, fixed, val)
    beta = jnp.clip(th[k:], D.lo, D.hi)
    # the clipped coefficients held on their bounds, the other components re-solved
    # (the bound-constrained least squares when one bound is active), clipped again
    clipped = beta != th[k:]
    if D.mu_lo is None:
        th = pinned_solve(A, b, jnp.concatenate([~est, clipped]), jnp.concatenate([mu_fixed, beta]))
        return th[:k], jnp.clip(th[k:], D.lo, D.hi)
    mu = jnp.clip(th[:k], D.mu_lo, D.mu_hi)
    held = ~est | (mu != th[:k])
    vals = jnp.concatenate([jnp.where(est, mu, mu_fixed), beta])
    th = pinned_solve(A, b, jnp.concatenate([held, clipped]), vals)
    return jnp.clip(th[:k], D.mu_lo, D.mu_hi), jnp.clip(th[k:], D.lo, D.hi)


def coefficient_design(model, pop: Population, fd, iiv: tuple, estimate):
    """The estimated covariate coefficients as a mu-referenced regression (checked
    before anything compiles): ``(design, labels, log-scale mask, initial beta)``.

    Each coefficient must enter ``log`` of its parameter linearly (Monolix's and
    saemix's covariate model): a :class:`Power` (``theta log(x / ref)``), an
    :class:`Exponential` (``theta (x - ref)``) or a :class:`Categorical` (``log(factor)``
    times the category's indicator; ``beta`` is the log factor). The parameter must have
    IIV on a log transform. A coefficient's natural-scale bounds become bounds on
    ``beta``.

    Raises:
        ValueError: what :func:`fit_population` refuses (a missing or non-finite
            column, a factor that is not positive, a coefficient the data cannot inform,
            clashing labels), and a :class:`Linear` (or other non-log-linear) estimated
            effect, an estimated effect of a time-varying covariate, or one on a
            parameter without IIV or whose transform is not log; each naming the effect.
    """
    N, k = fd.n, len(iiv)
    effects = tuple(c for c in pop.covariates if c.estimate)
    if not effects:
        z = jnp.zeros((0,))
        return CoefficientDesign(jnp.zeros((N, k, 0)), z, z), (), np.zeros(0, bool), np.zeros(0)
    for c in effects:
        if c.covariate in fd.varying:
            raise ValueError(
                f"saem: covariate effect {c.describe()} is estimated but {c.covariate!r} "
                "changes within subjects (time-varying): SAEM's covariate regression needs "
                "one value per subject. Fix its coefficient (estimate=False; SAEM fits "
                "fixed effects of time-varying covariates) or estimate it by FOCE-I "
                "(fit_population)"
            )
        if not isinstance(c, (Power, Exponential, Categorical)):
            raise ValueError(
                f"saem: covariate effect {c.describe()} is estimated but its log-factor is "
                f"not linear in its coefficient ({type(c).__name__}: log(1 + theta (x - "
                "ref))); SAEM estimates Power, Exponential and Categorical coefficients "
                "(mu-referenced). Use Exponential (the same effect near ref), fix it "
                "(estimate=False) or estimate it by FOCE-I (fit_population)"
            )
        if c.param not in iiv:
            raise ValueError(
                f"saem: covariate effect {c.describe()} is estimated but {c.param!r} has no "
                f"IIV; SAEM estimates coefficients of mu-referenced parameters (with IIV: "
                f"{list(iiv)}). Give {c.param!r} IIV, fix the coefficient or use "
                "fit_population"
            )
        if model.param(c.param).transform != "log":
            raise ValueError(
                f"saem: covariate effect {c.describe()} is estimated but {c.param!r} has "
                f"transform {model.param(c.param).transform!r}; SAEM supports covariate "
                "factors on log-transformed parameters only"
            )
    # the checks fit_population makes (columns, factors, informative data, labels)
    covariate_model(pop, fd, model, estimate)
    cols, lo, hi, b0, is_log, labels = [], [], [], [], [], []
    for c in effects:
        x = np.asarray(fd.covariates[c.covariate], float)
        j = iiv.index(c.param)
        lo_n, hi_n = c.coefficient_bounds()
        if isinstance(c, Categorical):
            for (label, v), grp in zip(c.coefficients().items(), c.groups()):
                col = np.zeros((N, k))
                col[:, j] = np.isin(x, np.asarray(grp, float)).astype(float)
                cols.append(col)
                lo.append(math.log(lo_n) if lo_n > 0 else -math.inf)
                hi.append(math.log(hi_n) if math.isfinite(hi_n) else math.inf)
                b0.append(math.log(v))
                is_log.append(True)
                labels.append(label)
            continue
        ((label, v),) = c.coefficients().items()
        col = np.zeros((N, k))
        if isinstance(c, Power):
            col[:, j] = np.log(x / c.ref)
        elif isinstance(c, Exponential):
            col[:, j] = x - c.ref
        cols.append(col)
        lo.append(lo_n)
        hi.append(hi_n)
        b0.append(v)
        is_log.append(False)
        labels.append(label)
    # a coefficient is kept strictly inside its bounds (as a Covariate requires), by
    # a relative 1e-9
    lo_a, hi_a = np.asarray(lo, float), np.asarray(hi, float)
    fl, fh = np.isfinite(lo_a), np.isfinite(hi_a)
    lo_a[fl] += 1e-9 * np.maximum(1.0, np.abs(lo_a[fl]))
    hi_a[fh] -= 1e-9 * np.maximum(1.0, np.abs(hi_a[fh]))
    D = CoefficientDesign(jnp.asarray(np.stack(cols, -1)), jnp.asarray(lo_a), jnp.asarray(hi_a))
    return D, tuple(labels), np.asarray(is_log), np.asarray(b0, float)
