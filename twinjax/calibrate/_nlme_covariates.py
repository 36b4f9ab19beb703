"""Covariate effects in a FOCE-I population fit (:mod:`._nlme`): the multiplicative
factors of the fixed effects (:func:`factor_table`), the estimated effects' factors
computed in JAX from the outer vector (:class:`CovariateFactors`), and the checks of the
effects against the data before anything compiles (:func:`covariate_model`)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..ode import Model, Piecewise
from ..population import Population
from ._nlme_outer import Coef
from ._terms import covariate_columns, refuse_time_varying


def factor_table(
    pop: Population, covariates, n: int, fixed_only: bool = False, varying=None
) -> dict:
    """Multiplicative covariate factors ``{name: (n,) or Piecewise}`` (1 where no
    effect), at the effects' current coefficients; ``fixed_only``: of the effects not
    estimated. ``varying``: ``FitData.varying`` (time-varying covariates' tables)."""
    refuse_time_varying(pop, covariates, varying)
    cols = covariate_columns(covariates, varying)
    out: dict = {q: np.ones(n) for q in pop.model.param_names}
    for c in pop.covariates:
        if fixed_only and c.estimate:
            continue
        x = cols[c.covariate]
        f: Any
        if isinstance(x, Piecewise):
            f = x.map(lambda v, c=c: np.asarray(c.factor(v), float))
        else:
            f = np.asarray(c.factor(jnp.asarray(x)))
        out[c.param] = out[c.param] * f
    return out


def on_grid(v, grid):
    """A factor or covariate as an array: ``(N,)``, or ``(N, C)`` on ``grid``."""
    if not isinstance(v, Piecewise):
        return jnp.asarray(v)
    if not np.array_equal(np.asarray(v.times), np.asarray(grid)):
        raise ValueError("time-varying covariates must share one table of change times")
    return jnp.asarray(v.values)


class CovariateFactors(eqx.Module):
    """Covariate factors of a fit with estimated coefficients: the fixed effects'
    factors (precomputed) times the estimated effects' factors, computed in JAX from
    the coefficient vector (so the outer AD differentiates through them).

    Time-varying covariates and factors are ``(N, C)`` arrays on one table of change
    times ``grid`` (NOCB), turned into :class:`~twinjax.Piecewise` values at the end.
    """

    fixed: dict  # {param: (N,) or (N, C)}
    cols: dict  # {covariate: (N,) or (N, C)} of the estimated effects
    effects: tuple = eqx.field(static=True)  # the estimated Covariate effects
    grid: Any = None  # (N, C) change times of the (N, C) entries

    def evaluate(self, coefs) -> dict:
        out = dict(self.fixed)
        off = 0
        for e in self.effects:
            m = len(e.coefficients())
            f = e.factor_from(self.cols[e.covariate], [coefs[off + j] for j in range(m)])
            a = out[e.param]
            if jnp.ndim(a) < jnp.ndim(f):
                a = a[:, None]
            elif jnp.ndim(f) < jnp.ndim(a):
                f = f[:, None]
            out[e.param] = a * f
            off += m
        return {
            k: Piecewise(self.grid, v, "nocb") if jnp.ndim(v) == 2 else v for k, v in out.items()
        }


def covariate_factors(pop: Population, fd, effects) -> dict | CovariateFactors:
    """The covariate factors a fit's objective uses: ``{name: (N,) or Piecewise}``
    when no coefficient is estimated, else a :class:`CovariateFactors` (the estimated effects'
    factors computed from the outer vector in JAX), with time-varying covariates
    (``fd.varying``) on one table of change times."""
    N = fd.n
    if not effects:
        return {
            k: jax.tree.map(jnp.asarray, v)
            for k, v in factor_table(pop, fd.covariates, N, varying=fd.varying).items()
        }
    fixed = factor_table(pop, fd.covariates, N, fixed_only=True, varying=fd.varying)
    cols = covariate_columns(fd.covariates, fd.varying)
    grid = next(iter(fd.varying.values())).times if fd.varying else None
    return CovariateFactors(
        {k: on_grid(v, grid) for k, v in fixed.items()},
        {c.covariate: on_grid(cols[c.covariate], grid) for c in effects},
        effects,
        None if grid is None else jnp.asarray(grid),
    )


def covariate_model(pop: Population, fd, model: Model, estimate) -> tuple:
    """Check the covariate effects against the data (before anything compiles) and
    return ``(estimated effects, their Coef slots, initial coefficients)``.

    Raises:
        ValueError: a covariate column missing or not finite, a factor that is not
            positive and finite at the starting coefficients, an estimated coefficient
            the data cannot inform (a constant covariate, a category no subject has, a
            categorical with no reference category left), or clashing labels.
    """
    cov = fd.covariates
    ids = list(fd.ids)
    cols = {}
    for c in pop.covariates:
        if c.covariate not in cov.columns:
            have = [k for k in cov.columns if str(k).upper() != "ID"]
            raise ValueError(
                f"covariate effect {c.describe()}: the data have no covariate column "
                f"{c.covariate!r}; covariate columns: {have}"
            )
        try:
            x = np.asarray(cov[c.covariate], dtype=float)
        except (TypeError, ValueError):
            raise ValueError(
                f"covariate effect {c.describe()}: column {c.covariate!r} is not numeric"
            ) from None
        if c.covariate in fd.varying:  # a time-varying covariate: every record's value
            x = np.asarray(fd.varying[c.covariate].values, float)
        x = x.reshape(len(ids), -1)  # (N, C); C = 1 for a baseline covariate
        bad = ~np.isfinite(x)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(
                f"covariate effect {c.describe()}: {c.covariate} of subject ID {ids[i]} is "
                f"{x[i, j]} (missing or not finite); every subject needs a value"
            )
        f = np.asarray(c.factor(jnp.asarray(x)), dtype=float)
        x = x.ravel()
        cols[c.covariate] = x
        f = f.ravel()
        badf = ~(np.isfinite(f) & (f > 0))
        if badf.any():
            i = int(np.flatnonzero(badf)[0])
            raise ValueError(
                f"covariate effect {c.describe()}: its factor is {f[i]} for subject ID "
                f"{ids[i * len(ids) // x.size]} ({c.covariate} = {x[i]}) at the starting "
                f"coefficients "
                f"{c.coefficients()}; it must be positive and finite for every subject"
            )
    effects = tuple(c for c in pop.covariates if c.estimate)
    slots, init = [], []
    for c in effects:
        x = cols[c.covariate]
        groups = c.groups() if hasattr(c, "groups") else None
        if groups is None:
            if np.ptp(x) == 0:
                raise ValueError(
                    f"covariate effect {c.describe()} is estimated but {c.covariate} is "
                    f"{x[0]} for every subject: the data cannot inform its coefficient"
                )
        else:
            for label, grp in zip(c.coefficients(), groups):
                if not np.isin(x, np.asarray(grp, float)).any():
                    raise ValueError(
                        f"covariate effect {c.describe()} is estimated but no subject has "
                        f"{c.covariate} in {list(grp)} (coefficient {label}); categories in "
                        f"the data: {sorted(set(x.tolist()))}"
                    )
            listed = np.asarray([v for g in groups for v in g], float)
            if np.isin(x, listed).all():
                raise ValueError(
                    f"covariate effect {c.describe()} estimates a factor for every "
                    f"category in the data {sorted(set(x.tolist()))}: leave the reference "
                    "category (factor 1) out, or the factors and the typical value "
                    f"of {c.param!r} cannot be told apart"
                )
        lo, hi = c.coefficient_bounds()
        for label, v in c.coefficients().items():
            slots.append(Coef(label, lo, hi))
            init.append(v)
    labels = [s.label for s in slots]
    dup = sorted({k for k in labels if labels.count(k) > 1})
    if dup:
        raise ValueError(
            f"estimated covariate coefficients share the labels {dup}: give each effect "
            "its own name= (e.g. Power(..., name='CL~WT_exp'))"
        )
    clash = [k for k in labels if k in model.param_names]
    if clash:
        raise ValueError(
            f"estimated covariate coefficient labels {clash} are model parameter names; "
            "choose another name="
        )
    return effects, tuple(slots), np.asarray(init, float)
