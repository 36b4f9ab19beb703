"""Population (NLME) fits by FOCE-I: first-order conditional estimation with interaction.

The population parameters ``phi = (theta, Omega, sigma)`` are the typical values of the
fitted parameters (unconstrained coordinates), the Cholesky factor of Omega (log
diagonal, free off-diagonal) and the log residual SDs. For each ``phi`` the inner
problem finds every subject's mode ``eta_i*`` (the batched MAP fit of ``_map.py``);
the outer objective is the Laplace approximation of ``-2 log L``:

```
OFV = sum_i [ O_i(eta_i*) + log det Omega + log det(H_i / 2) ]
```

with ``O_i`` the MAP objective (``sum (y - m)^2 / s^2 + log s^2 + eta' Omega^-1 eta``,
``s`` evaluated at the individual prediction: the *interaction*) and ``H_i / 2`` the
first-order (expected-information) curvature ``sum J' (dm^2 + 2 ds^2) / s^2 J +
Omega^-1``. This is NONMEM's objective function value convention: the constant
``n_obs log(2 pi)`` is **not** included in ``ofv``; ``minus2ll`` includes it.

The outer gradient is the exact total derivative of this objective (the modes follow
``phi``). ``O_i`` needs no derivative of the mode (its gradient in ``eta`` is zero
there), but the log-determinant term depends on ``eta_i*`` through ``H_i``, so
``d eta_i*/d phi`` is needed: by the implicit function theorem it is
``-(d^2 O_i/d eta^2)^-1 d^2 O_i/(d eta d phi)`` with the EXACT Hessian of ``O_i`` in
``eta`` (not the first-order ``H_i``, which gave a wrong gradient and stopped the fit
short, issue #17). The exact Hessians are computed by forward-over-forward AD, batched
over subjects (``k`` tangent passes for ``k`` random effects), and enter through one
differentiable Newton step ``eta* - Hx^-1 G(phi, eta*)`` whose derivative is
``-Hx^-1 dG/dphi`` (Almquist et al. 2015). The gradient is computed in forward mode (a
nested forward-mode pass through the batched solver), and the outer problem is solved by
BFGS. Standard errors come from the inverse of the Hessian of the OFV (central finite
differences of the AD gradient; NONMEM's ``$COV MATRIX=R``), transformed to the natural
scale by the delta method.

References:
    - Beal SL, Sheiner LB. NONMEM Users Guides, Part VII (FOCE, FOCE-I, OFV).
    - Wang Y. Derivation of various NONMEM estimation methods. J Pharmacokinet
      Pharmacodyn 34:575-593, 2007.
    - Almquist J, Leander J, Jirstrand M. J Pharmacokinet Pharmacodyn 42:191-209, 2015.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..model import Model, Piecewise
from ..population import Population
from ..solve._base import AbstractSolver
from ..solve._ensemble import Ensemble
from ._iov import check_iov, refuse_varying_iov, with_occasions
from ._map import (
    FitResult,
    as_population,
    covariate_columns,
    fit_censoring,
    fit_individual,
    lm_batched,
    make_spec,
    posterior_terms,
    prepare_data,
    refuse_time_varying,
    resolve_outputs,
)
from ._residual import ErrorModel

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PopulationFitResult", "fit", "fit_population"]

LOG_2PI = float(np.log(2 * np.pi))


class _OuterState(TypedDict):
    """State shared by the outer objective: warm-start modes, call count, best OFV."""

    eta: jax.Array
    n: int
    best: float


# ============================================================================ packing
@dataclasses.dataclass(frozen=True)
class Coef:
    """One estimated covariate coefficient: its label and natural-scale bounds.

    The outer vector holds it unconstrained: ``x = z`` (no bounds), ``lower + e^z``,
    ``upper - e^z``, or ``lower + (upper - lower) sigmoid(z)`` (both bounds), as NONMEM
    transforms bounded THETAs.
    """

    label: str
    lower: float = -np.inf
    upper: float = np.inf

    def to_z(self, x: float) -> float:
        lo, hi = self.lower, self.upper
        if np.isfinite(lo) and np.isfinite(hi):
            u = (x - lo) / (hi - lo)
            return float(np.log(u) - np.log1p(-u))
        if np.isfinite(lo):
            return float(np.log(x - lo))
        if np.isfinite(hi):
            return float(np.log(hi - x))
        return float(x)

    def from_z(self, z):
        lo, hi = self.lower, self.upper
        if np.isfinite(lo) and np.isfinite(hi):
            return lo + (hi - lo) * jax.nn.sigmoid(z)
        if np.isfinite(lo):
            return lo + jnp.exp(z)
        if np.isfinite(hi):
            return hi - jnp.exp(z)
        return z


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each population parameter lives in the outer vector ``phi``:
    ``[theta | covariate coefficients | Omega (Cholesky) | log omega_iov (SDs) | log
    sigma]``."""

    theta: tuple  # names of estimated typical values
    iiv: tuple
    full_omega: bool
    n_sigma: int
    cov: tuple = ()  # estimated covariate coefficients (Coef), in the order of CovariateFactors
    iov: tuple = ()  # parameters with inter-occasion variability (one variance each)
    n_occ: int = 0  # occasions per subject (padded)

    @property
    def n_omega(self) -> int:
        k = len(self.iiv)
        return k * (k + 1) // 2 if self.full_omega else k

    @property
    def size(self) -> int:
        return len(self.theta) + len(self.cov) + self.n_omega + len(self.iov) + self.n_sigma

    def tril(self):
        k = len(self.iiv)
        return np.tril_indices(k) if self.full_omega else (np.arange(k), np.arange(k))


def unpack_outer(model: Model, lay: Layout, phi):
    """``phi`` -> (theta natural dict, Omega, sigma); see :func:`outer_coefs` for the
    covariate coefficients."""
    nt, nc, no = len(lay.theta), len(lay.cov), lay.n_omega
    z = phi[:nt]
    theta = model.from_unconstrained({k: z[i] for i, k in enumerate(lay.theta)})
    k = len(lay.iiv)
    w = phi[nt + nc : nt + nc + no]
    rows, cols = lay.tril()
    diag = rows == cols
    vals = jnp.where(jnp.asarray(diag), jnp.exp(w), w)
    L = jnp.zeros((k, k), phi.dtype).at[rows, cols].set(vals)
    omega = L @ L.T
    sigma = jnp.exp(phi[nt + nc + no + len(lay.iov) :])
    return theta, omega, sigma


def iov_variances(lay: Layout, phi):
    """``(m,)`` the IOV variances ``omega_iov^2`` (the outer vector holds log SDs)."""
    off = len(lay.theta) + len(lay.cov) + lay.n_omega
    return jnp.exp(2.0 * phi[off : off + len(lay.iov)])


def prior_inverse(lay: Layout, phi, omega):
    """``(Omega_aug^-1, log det Omega_aug)`` of all random effects of a subject: the
    IIV ``Omega`` and, with IOV, ``omega_iov^2`` for each of the ``K`` kappas of every
    IOV parameter (block diagonal; padding occasions included, see ``_iov``)."""
    oinv = jnp.linalg.inv(omega)
    _, ld = jnp.linalg.slogdet(omega)
    if not lay.iov:
        return oinv, ld
    v = iov_variances(lay, phi)
    d = jnp.repeat(1.0 / v, lay.n_occ)
    k, m = omega.shape[0], d.shape[0]
    full = jnp.zeros((k + m, k + m), phi.dtype).at[:k, :k].set(oinv)
    full = full.at[k:, k:].set(jnp.diag(d))
    return full, ld + lay.n_occ * jnp.sum(jnp.log(v))


def outer_coefs(lay: Layout, phi):
    """The estimated covariate coefficients ``(n_cov,)`` on their natural scale."""
    nt = len(lay.theta)
    if not lay.cov:
        return jnp.zeros((0,), phi.dtype)
    return jnp.stack([c.from_z(phi[nt + i]) for i, c in enumerate(lay.cov)])


def pack_outer(
    model: Model, lay: Layout, theta: dict, omega, sigma, coefs=(), iov=()
) -> np.ndarray:
    """The outer vector; ``iov``: the IOV variances in the order of ``lay.iov``."""
    z = model.to_unconstrained({k: jnp.asarray(theta[k]) for k in lay.theta}, lay.theta)
    L = np.linalg.cholesky(np.asarray(omega) + 1e-12 * np.eye(len(lay.iiv)))
    rows, cols = lay.tril()
    w = L[rows, cols]
    w = np.where(rows == cols, np.log(np.maximum(w, 1e-12)), w)
    zc = np.asarray([c.to_z(float(v)) for c, v in zip(lay.cov, coefs)], float)
    wi = 0.5 * np.log(np.asarray(iov, float).reshape(len(lay.iov)))
    return np.concatenate(
        [np.asarray([z[k] for k in lay.theta]), zc, w, wi, np.log(np.asarray(sigma))]
    )


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


def _typical(model, lay, theta, base, factors, coefs=None, occ=None):
    """Covariate-adjusted typical values ``{name: (N,)}`` for natural ``theta``.

    ``factors``: ``{name: (N,)}`` fixed factors, or a :class:`CovariateFactors` evaluated at the
    covariate coefficients ``coefs`` (:func:`outer_coefs`). ``occ``: ``(N, K)`` occasion
    start times of a fit with IOV (the IOV parameters become LOCF Piecewise values).
    """
    if isinstance(factors, CovariateFactors):
        if coefs is None:
            raise ValueError("estimated covariate effects need their coefficients (coefs=)")
        factors = factors.evaluate(coefs)
    tv = {}
    for q in model.param_names:
        v = theta[q] if q in theta else base[q]
        f = factors[q]
        tv[q] = v * (f if isinstance(f, Piecewise) else jnp.asarray(f))
    if lay.iov:
        if occ is None:
            raise ValueError("a fit with IOV needs the occasion start times (occ=)")
        tv = with_occasions(tv, lay.iov, occ)
    return tv


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


# ============================================================================ objective
def exact_hessian(spec, lay, base, factors, phi, eta, ev, ts, y, mask, occ=None):
    """``(N, k, k)`` exact Hessians ``d^2 O_i / d eta^2`` of the individual objectives.

    Forward over forward mode: the MAP gradient ``G`` of ``posterior_terms`` is exact
    (it uses the Jacobian ``df/deta``, not an approximation), and each subject's ``G_i``
    depends only on its own ``eta_i``, so one tangent ``e_j`` broadcast over the
    subjects gives column ``j`` of every subject's Hessian at once (``k`` passes).
    """
    theta, omega, sigma = unpack_outer(spec.model, lay, phi)
    tv = _typical(spec.model, lay, theta, base, factors, outer_coefs(lay, phi), occ)
    oinv, _ = prior_inverse(lay, phi, omega)

    def grad(e):
        return posterior_terms(spec, tv, e, ev, ts, y, mask, sigma, oinv)[1]

    k = eta.shape[-1]

    def column(v):
        return jax.jvp(grad, (eta,), (jnp.broadcast_to(v, eta.shape),))[1]

    H = jax.vmap(column, out_axes=-1)(jnp.eye(k, dtype=eta.dtype))
    return 0.5 * (H + jnp.swapaxes(H, -1, -2))


def ofv_terms(spec, lay, base, factors, phi, eta, ev, ts, y, mask, hess, occ=None):
    """Per-subject FOCE-I objective at ``phi`` with modes ``eta`` (N, k).

    ``hess``: the ``(N, k, k)`` exact Hessians of the individual objectives at ``eta``
    (:func:`exact_hessian`), a constant here. The value is the objective; its
    derivative in ``phi`` is the total derivative ``dOFV/dphi`` with the modes
    following ``phi``.
    """
    model = spec.model
    theta, omega, sigma = unpack_outer(model, lay, phi)
    tv = _typical(model, lay, theta, base, factors, outer_coefs(lay, phi), occ)
    oinv, ld_o = prior_inverse(lay, phi, omega)
    eta_s = jax.lax.stop_gradient(eta)
    O, G, H, _, _, ok = posterior_terms(spec, tv, eta_s, ev, ts, y, mask, sigma, oinv)
    # One differentiable Newton step with the EXACT Hessian of O_i in eta:
    # d(eta*)/d(phi) = -(d^2O/deta^2)^-1 d^2O/(deta dphi) (implicit function theorem).
    # The term O_i needs no mode derivative (G = 0 at the mode), but the Laplace
    # log-determinant depends on eta* through the curvature, and a first-order (Fisher)
    # curvature here would give a wrong d(eta*)/d(phi) and a wrong outer gradient.
    eye = jnp.eye(H.shape[-1], dtype=H.dtype)[None]
    Hx = jax.lax.stop_gradient(hess)
    # where it is not positive definite (a mode not reached) the Fisher curvature stands in
    good = ok & jnp.all(jnp.isfinite(jnp.linalg.cholesky(Hx)), (-1, -2))
    Hs = jnp.where(
        good[:, None, None], Hx, jax.lax.stop_gradient(jnp.where(ok[:, None, None], H, eye))
    )
    eta1 = eta_s - jnp.linalg.solve(Hs, jnp.where(ok[:, None], G, 0.0)[..., None])[..., 0]
    O1, _, H1, _, _, ok1 = posterior_terms(spec, tv, eta1, ev, ts, y, mask, sigma, oinv)
    _, ld_h = jnp.linalg.slogdet(jnp.where(ok1[:, None, None], H1 / 2.0, eye))
    ofv_i = O1 + ld_o + ld_h
    return jnp.where(ok & ok1, ofv_i, jnp.inf)


@eqx.filter_jit
def _ofv_and_grad(spec, lay, base, factors, phi, eta, ev, ts, y, mask, occ=None):
    """The FOCE-I objective and its exact gradient in ``phi`` (forward mode)."""
    hess = exact_hessian(spec, lay, base, factors, phi, eta, ev, ts, y, mask, occ)

    def F(p):
        return jnp.sum(ofv_terms(spec, lay, base, factors, p, eta, ev, ts, y, mask, hess, occ))

    eye = jnp.eye(phi.shape[0], dtype=phi.dtype)
    vals, grads = jax.vmap(lambda v: jax.jvp(F, (phi,), (v,)))(eye)
    return vals[0], grads


@eqx.filter_jit
def inner_modes(spec, lay, base, factors, phi, eta0, ev, ts, y, mask, max_iter, tol, occ=None):
    theta, omega, sigma = unpack_outer(spec.model, lay, phi)
    tv = _typical(spec.model, lay, theta, base, factors, outer_coefs(lay, phi), occ)
    oinv, _ = prior_inverse(lay, phi, omega)
    return lm_batched(spec, tv, eta0, ev, ts, y, mask, sigma, oinv, max_iter, tol)


# ============================================================================ covariates
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


# ============================================================================ result
@dataclasses.dataclass(eq=False)
class PopulationFitResult:
    """A FOCE-I population fit.

    Attributes:
        theta: ``{name: value}`` estimated typical values (natural scale).
        omega: ``(k, k)`` estimated IIV covariance (unconstrained coordinates; for
            log-normal parameters the variance of ``log p``).
        error: the fitted :class:`ErrorModel` (of the first output).
        errors: ``{output: ErrorModel}``, the fitted error model of every output.
        censoring: ``"none"``, ``"m3"`` or ``"m4"``; n_censored: censored records.
        population: the fitted :class:`~twinjax.Population` (for simulation, VPCs).
        ofv: objective function value, ``-2 log L`` without ``n_obs log(2 pi)``
            (NONMEM's convention; censored records contribute ``-2 log P`` and no
            constant, and are not counted in ``n_obs``).
        minus2ll: ``-2 log L`` with the constant.
        aic, bic: from ``minus2ll``.
        n_obs, n_subjects, n_params: counts.
        estimates: a DataFrame (parameter, estimate, SE, RSE %) on the natural scale:
            typical values, estimated covariate coefficients (labelled
            ``"<param>~<covariate>"`` or the effect's ``name``), ``OMEGA(a,b)``
            (variances and covariances), ``SIGMA_add`` / ``SIGMA_prop`` (SDs).
        covariate_effects: ``{label: value}`` of the estimated covariate coefficients
            (empty when every effect is fixed); ``population.covariates`` holds the
            effects with these values.
        cov_phi: covariance of the outer vector (NaN when not computed).
        individual: the post-hoc :class:`FitResult` (MAP etas at the estimates, PRED,
            IPRED, IWRES, shrinkage).
        cwres: ``(N, T)`` conditional weighted residuals (FOCE, Hooker et al. 2007).
        converged: whether the outer Newton decrement ``g' H^-1 g`` (the OFV decrease a
            Newton step promises) is below ``outer_tol`` after the Newton polishing
            (without polishing: whether BFGS reported success).
        newton_decrement: that decrement (OFV units).
        n_outer: outer objective evaluations; wall_s: fitting time.
        omega_iov: ``{param: variance}`` the estimated inter-occasion variances (rows
            ``OMEGA_IOV(param)`` of ``estimates``; empty without ``iov``). The
            post-hoc kappas per subject and occasion are ``individual.kappas`` and
            ``individual.occasions``. ``cwres`` and the uncertainty tools
            (``_covstep``, profiles, bootstrap) do not model the kappas yet.
    """

    theta: dict
    omega: np.ndarray
    error: ErrorModel
    population: Population
    ofv: float
    minus2ll: float
    aic: float
    bic: float
    n_obs: int
    n_subjects: int
    n_params: int
    estimates: pd.DataFrame
    cov_phi: np.ndarray
    individual: FitResult
    cwres: np.ndarray
    converged: bool
    n_outer: int
    wall_s: float
    message: str = ""
    newton_decrement: float = float("nan")
    errors: dict = dataclasses.field(default_factory=dict)
    censoring: str = "none"
    n_censored: int = 0
    covariate_effects: dict = dataclasses.field(default_factory=dict)
    omega_iov: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """A short text summary (estimates table and OFV)."""
        return (
            f"FOCE-I fit: {self.n_subjects} subjects, {self.n_obs} observations"
            + (f", {self.n_censored} censored ({self.censoring})" if self.n_censored else "")
            + "\n"
            f"OFV (NONMEM, no constant) = {self.ofv:.3f}; -2LL = {self.minus2ll:.3f}; "
            f"AIC = {self.aic:.3f}; converged = {self.converged}\n" + self.estimates.to_string()
        )

    def __repr__(self) -> str:
        th = ", ".join(f"{k}={v:.4g}" for k, v in {**self.theta, **self.covariate_effects}.items())
        return f"PopulationFitResult({th}; OFV={self.ofv:.3f})"


def fit_population(
    model: Model,
    data,
    population: Population | dict,
    error: ErrorModel | Mapping[str, ErrorModel],
    *,
    estimate: Sequence[str] | None = None,
    omega: str = "diagonal",
    output: str | None = None,
    solver: AbstractSolver | None = None,
    max_outer: int = 300,
    gtol: float = 1e-3,
    inner_max_iter: int = 60,
    covariance: bool = True,
    polish: bool = True,
    max_newton: int = 5,
    outer_tol: float = 1e-3,
    verbose: bool = False,
    censoring: str | None = None,
    lloq: float | None = None,
    dvid=None,
    output_column: str = "DVID",
    iov: Mapping[str, float] | None = None,
    occasion_column: str = "OCC",
) -> PopulationFitResult:
    """Population fit by FOCE-I with the Laplace approximation.

    Arguments:
        model: the model.
        data: a :class:`~twinjax.data.Dataset` (or mapping, see ``prepare_data``).
        population: the initial population (typical values, covariate effects,
            Omega over the parameters with IIV). Covariate effects made with
            ``estimate=True`` have their coefficients estimated (from their values,
            inside their ``bounds``); the others stay fixed.
        error: the residual error model with initial SDs (all estimated), or one per
            output ``{output: ErrorModel}`` (a joint fit of several outputs; see
            :func:`~twinjax.calibrate.fit_individual` for ``dvid`` / ``output_column``).
        estimate: typical values to estimate (default: the parameters with IIV); the
            others stay at the population's values.
        omega: ``"diagonal"`` or ``"full"`` (block) Omega.
        output: the fitted model output (default: the first).
        solver: forward-mode differentiable solver (default ``solvers.Ensemble()``).
        max_outer: maximum outer BFGS iterations; gtol: gradient tolerance (OFV units).
        inner_max_iter: inner LM iteration cap per outer evaluation.
        covariance: compute standard errors (finite-difference Hessian of the OFV).
        polish: after BFGS, take Newton steps with the finite-difference Hessian of
            the AD gradient until the Newton decrement ``g' H^-1 g`` is below
            ``outer_tol`` (OFV units; at most ``max_newton`` Hessians). This decides
            ``converged``; without it ``converged`` is BFGS's own flag.
        verbose: print the OFV as it goes.
        censoring, lloq, dvid, output_column: censored records and output tags, as
            in :func:`~twinjax.calibrate.fit_individual`. With censored records the
            objective is the Laplace approximation with the censored records'
            ``-2 log P`` terms (see ``docs/calibration.md``).
        iov: inter-occasion variability, ``{parameter: initial variance}`` (variances
            of ``kappa`` in the transformed coordinate, like Omega): each subject has
            one kappa per IOV parameter and occasion, ``P = g^-1(g(TV) + eta +
            kappa)`` on that occasion, ``kappa ~ N(0, omega_iov^2)`` with one variance
            per parameter shared by all occasions (estimated, reported as
            ``OMEGA_IOV(P)`` with its SE). The kappas are random effects of the inner
            problem and of the Laplace term; see :mod:`twinjax.calibrate._iov`.
        occasion_column: the data column numbering each record's occasion (with
            ``iov``; the data must then be a Dataset).

    Returns:
        A :class:`PopulationFitResult`.

    Raises:
        ValueError: unknown names, an Omega option other than diagonal/full, or
            covariate effects the data cannot support (a missing column, a factor that
            is not positive, a coefficient the data cannot inform), before anything is
            compiled.
    """
    import pandas as pd
    import scipy.optimize as so

    t_start = time.perf_counter()
    pop = as_population(model, population)
    if omega not in ("diagonal", "full"):
        raise ValueError(f"omega must be 'diagonal' or 'full', got {omega!r}")
    estimate = tuple(estimate) if estimate is not None else tuple(pop.iiv)
    unknown = [k for k in estimate if k not in model.param_names]
    if unknown:
        raise ValueError(f"estimate names unknown parameters {unknown}")
    iov_var = check_iov(model, iov)
    iov_names = tuple(iov_var)
    outputs, errors = resolve_outputs(model, error, output)
    solver = solver or Ensemble()
    fd = prepare_data(
        model,
        data,
        error,
        output=output,
        lloq=lloq,
        censoring=censoring,
        dvid=dvid,
        output_column=output_column,
        occasion_column=occasion_column if iov_var else None,
    )
    N = fd.n
    cmode = fit_censoring(fd, censoring)
    if iov_var:
        refuse_varying_iov(pop, iov_names, fd.varying)
    n_occ = fd.occasions.k if iov_var else 0
    occ = jnp.asarray(fd.occasions.times) if iov_var else None
    spec = make_spec(model, solver, pop.iiv, errors, outputs, cmode, iov_names, n_occ)
    n_sigma = sum(len(e.names) for e in errors)
    effects, slots, coef0 = covariate_model(pop, fd, model, estimate)
    lay = Layout(estimate, tuple(pop.iiv), omega == "full", n_sigma, slots, iov_names, n_occ)
    base = {k: float(v) for k, v in pop.typical.items()}
    factors = covariate_factors(pop, fd, effects)
    om0 = np.asarray(pop.omega)
    if omega == "diagonal":
        om0 = np.diag(np.diag(om0))
    sigma0 = np.concatenate([np.asarray(e.sigma()) for e in errors])
    phi0 = pack_outer(
        model, lay, {k: base[k] for k in estimate}, om0, sigma0, coef0, list(iov_var.values())
    )
    ev, ts = fd.ev, jnp.asarray(fd.t_eval)
    y, mask = fd.obs(), jnp.asarray(fd.mask)
    k = spec.n_random
    state: _OuterState = {"eta": jnp.zeros((N, k)), "n": 0, "best": np.inf}
    mi = jnp.asarray(inner_max_iter)

    def modes(phi, warm=True):
        eta0 = state["eta"] if warm else jnp.zeros((N, k))
        out = inner_modes(
            spec, lay, base, factors, jnp.asarray(phi), eta0, ev, ts, y, mask, mi, 1e-9, occ
        )
        eta = out["eta"]
        good = np.asarray(out["ok"])
        if warm and not good.all():  # restart failed subjects from zero
            out2 = inner_modes(
                spec,
                lay,
                base,
                factors,
                jnp.asarray(phi),
                jnp.zeros((N, k)),
                ev,
                ts,
                y,
                mask,
                mi,
                1e-9,
                occ,
            )
            eta = jnp.where(jnp.asarray(good)[:, None], eta, out2["eta"])
        return eta

    def fun(phi):
        state["n"] += 1
        eta = modes(phi)
        val, grad = _ofv_and_grad(
            spec, lay, base, factors, jnp.asarray(phi), eta, ev, ts, y, mask, occ
        )
        val, grad = float(val), np.asarray(grad)
        if not np.isfinite(val) or not np.all(np.isfinite(grad)):
            return 1e12, np.zeros_like(phi)
        if val < state["best"]:
            state["eta"], state["best"] = eta, val
        if verbose:
            print(f"  outer {state['n']:4d}  OFV {val:.4f}")
        return val, grad

    res = so.minimize(
        fun, phi0, jac=True, method="BFGS", options=dict(maxiter=max_outer, gtol=gtol)
    )
    P = lay.size

    def evaluate(p):
        e = modes(p)
        v, g = _ofv_and_grad(spec, lay, base, factors, jnp.asarray(p), e, ev, ts, y, mask, occ)
        return float(v), np.asarray(g)

    def hessian(p):
        """Central finite differences of the AD gradient (NONMEM's R matrix)."""
        h = 1e-4
        Hm = np.zeros((P, P))
        for j in range(P):
            e = np.zeros(P)
            e[j] = h
            Hm[:, j] = (evaluate(p + e)[1] - evaluate(p - e)[1]) / (2 * h)
        return 0.5 * (Hm + Hm.T)

    # Newton polishing. BFGS stops on its gradient tolerance or, more often, with
    # "precision loss": close to the optimum the OFV changes by less than the noise of
    # the inner modes and of the ODE solver, so its line search fails although the
    # optimum is reached up to that noise. Convergence is decided here instead by the
    # outer Newton decrement g' H^-1 g (the OFV decrease a Newton step promises, in OFV
    # units) with the finite-difference Hessian H of the AD gradient -- the same matrix
    # the standard errors use, so it is computed anyway when covariance=True.
    phi = np.asarray(res.x, float)
    val, grad = evaluate(phi)
    Hm, dec, n_newton = None, np.inf, 0
    if polish:
        for _ in range(max_newton):
            n_newton += 1
            Hm = hessian(phi)
            try:
                step = -np.linalg.solve(Hm, grad)
            except np.linalg.LinAlgError:
                break
            dec = float(-grad @ step)
            if not np.isfinite(dec) or dec < 0:  # not positive definite: no Newton step
                dec = np.inf
                break
            if dec < outer_tol:
                break
            for t in (1.0, 0.5, 0.25, 0.125):  # backtracking on the OFV
                v2, g2 = evaluate(phi + t * step)
                if np.isfinite(v2) and v2 <= val + 1e-4 * t * grad @ step:
                    phi, val, grad = phi + t * step, v2, g2
                    break
            else:
                break
            Hm = None  # the Hessian is re-evaluated at the new point
    if Hm is None and covariance:
        Hm = hessian(phi)
        if polish:
            try:
                dec = float(grad @ np.linalg.solve(Hm, grad))
            except np.linalg.LinAlgError:
                dec = np.inf
    ofv = float(val)
    cov_phi = np.full((P, P), np.nan)
    if covariance and Hm is not None:
        try:
            cov_phi = 2.0 * np.linalg.inv(Hm)
        except np.linalg.LinAlgError:
            pass
    if polish:
        converged = bool(np.isfinite(dec) and 0 <= dec < outer_tol)
    else:
        converged = bool(res.success) or float(np.max(np.abs(grad))) < 10 * gtol
    theta, om, sig = unpack_outer(model, lay, jnp.asarray(phi))
    theta = {kk: float(v) for kk, v in theta.items()}
    iov_fit = {
        q: float(v) for q, v in zip(iov_names, np.asarray(iov_variances(lay, jnp.asarray(phi))))
    }
    coefs = np.asarray(outer_coefs(lay, jnp.asarray(phi)), float)
    cov_est = {c.label: float(v) for c, v in zip(lay.cov, coefs)}
    om = np.asarray(om)
    sig = np.asarray(sig)
    errs_fit, off = {}, 0
    for o, e in zip(outputs, errors):
        errs_fit[o] = e.replace(sig[off : off + len(e.names)])
        off += len(e.names)
    err_fit = errs_fit[outputs[0]]

    # natural-scale reporting vector and its Jacobian (delta method)
    rows, cols = lay.tril()

    def natural(p):
        th, o, s = unpack_outer(model, lay, p)
        parts = [th[kk] for kk in lay.theta]
        return jnp.concatenate(
            [jnp.stack(parts), outer_coefs(lay, p), o[rows, cols], iov_variances(lay, p), s]
        )

    nat = np.asarray(natural(jnp.asarray(phi)))
    Jn = np.asarray(jax.jacfwd(natural)(jnp.asarray(phi)))
    cov_nat = Jn @ cov_phi @ Jn.T
    se = np.sqrt(np.maximum(np.diag(cov_nat), 0.0))
    labels = (
        list(lay.theta)
        + [c.label for c in lay.cov]
        + [f"OMEGA({lay.iiv[a]},{lay.iiv[b]})" for a, b in zip(rows, cols)]
        + [f"OMEGA_IOV({q})" for q in lay.iov]
        + [
            f"SIGMA_{n}" if len(outputs) == 1 else f"SIGMA_{o}_{n}"
            for o, e in zip(outputs, errors)
            for n in e.names
        ]
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        rse = 100 * se / np.abs(nat)
    table = pd.DataFrame(dict(parameter=labels, estimate=nat, se=se, rse_pct=rse))
    table = table.set_index("parameter")

    fitted_covs, off = [], 0
    for c in pop.covariates:
        if c.estimate:
            m = len(c.coefficients())
            c = c.with_coefficients(coefs[off : off + m])
            off += m
        fitted_covs.append(c)
    fitted = Population(
        model,
        typical={**base, **theta},
        covariates=fitted_covs,
        omega=om,
        iiv=list(pop.iiv),
    )
    ind = fit_individual(
        model,
        fd,
        fitted,
        err_fit if len(outputs) == 1 else errs_fit,
        output=outputs[0] if len(outputs) == 1 else None,
        solver=solver,
        censoring=censoring,
        iov=iov_fit or None,
        occasion_column=occasion_column,
    )
    from ._diagnostics import cwres as _cwres

    cw = _cwres(ind)
    n_cens = int(np.sum(fd.censored))
    n_obs = int(np.sum(fd.mask)) - n_cens
    m2ll = ofv + n_obs * LOG_2PI
    n_par = P
    return PopulationFitResult(
        theta=theta,
        omega=om,
        error=err_fit,
        population=fitted,
        ofv=ofv,
        minus2ll=m2ll,
        aic=m2ll + 2 * n_par,
        bic=m2ll + n_par * np.log(n_obs),
        n_obs=n_obs,
        n_subjects=N,
        n_params=n_par,
        estimates=table,
        cov_phi=cov_phi,
        individual=ind,
        cwres=cw,
        converged=converged,
        n_outer=state["n"],
        wall_s=time.perf_counter() - t_start,
        message=f"BFGS: {res.message}; Newton polishing: {n_newton} Hessian(s), "
        f"decrement g'H^-1g = {dec:.3g} (tolerance {outer_tol:g})",
        newton_decrement=dec,
        errors=errs_fit,
        censoring=cmode,
        n_censored=n_cens,
        covariate_effects=cov_est,
        omega_iov=iov_fit,
    )


def fit(
    model: Model,
    data,
    prior,
    error: ErrorModel | Mapping[str, ErrorModel] | None = None,
    *,
    population: bool = False,
    **kwargs,
):
    """Fit a model to a dataset: individual MAP fits (twins) or a population (FOCE-I) fit.

    Arguments:
        model: the model.
        data: a :class:`~twinjax.data.Dataset` (or a mapping of arrays).
        prior: a :class:`~twinjax.Population` (or ``dict(typical=, omega=, iiv=)``): the
            prior of individual fits, the starting point of a population fit.
        error: the residual :class:`ErrorModel` (default additive, SD 1), or one per
            output ``{output: ErrorModel}``.
        population: False (default): :func:`fit_individual`; True: :func:`fit_population`.
        **kwargs: passed on.

    Returns:
        A :class:`FitResult` or a :class:`PopulationFitResult`.
    """
    error = error or ErrorModel("additive", add=1.0)
    if population:
        return fit_population(model, data, prior, error, **kwargs)
    return fit_individual(model, data, prior, error, **kwargs)
