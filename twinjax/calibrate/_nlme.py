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

The outer vector is in :mod:`._nlme_outer`, the covariate factors in
:mod:`._nlme_covariates`, the objective in :mod:`._nlme_objective` and the result class in
:mod:`._population_fit_result`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from ..ode import Model
from ..population import Population
from ..solve._base import AbstractSolver
from ..solve._ensemble import Ensemble
from ._iov import check_iov, refuse_varying_iov
from ._map import (
    as_population,
    fit_censoring,
    fit_individual,
    make_spec,
    prepare_data,
    resolve_outputs,
    spec_censoring,
)
from ._nlme_covariates import CovariateFactors as CovariateFactors
from ._nlme_covariates import covariate_factors as covariate_factors
from ._nlme_covariates import covariate_model as covariate_model
from ._nlme_covariates import factor_table as factor_table
from ._nlme_objective import exact_hessian as exact_hessian
from ._nlme_objective import inner_modes as inner_modes
from ._nlme_objective import ofv_and_grad as ofv_and_grad
from ._nlme_objective import ofv_terms as ofv_terms
from ._nlme_outer import Layout as Layout
from ._nlme_outer import at_bound, check_bounds, iov_variances
from ._nlme_outer import outer_coefs as outer_coefs
from ._nlme_outer import pack_outer as pack_outer
from ._nlme_outer import unpack_outer as unpack_outer
from ._population_fit_result import PopulationFitResult as PopulationFitResult
from ._population_fit_result import fitted_population, posthoc
from ._residual import ErrorModel

__all__ = ["PopulationFitResult", "fit", "fit_population"]

LOG_2PI = float(np.log(2 * np.pi))


class _OuterState(TypedDict):
    """State shared by the outer objective: warm-start modes, call count, best OFV."""

    eta: jax.Array
    n: int
    best: float


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
    bounds: Mapping[str, tuple[float, float]] | None = None,
    laplacian: bool | None = None,
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
        laplacian: the Laplace objective with the exact curvature: the log-determinant
            term uses the exact second derivatives of each subject's objective in eta
            (the second derivatives of the predictions included; NONMEM's
            ``METHOD=COND LAPLACIAN``) instead of FOCE-I's first-order curvature.
            Default (None): on when the fit has censored records (M3) or uses M4,
            whose terms are not Gaussian in eta (NONMEM requires LAPLACIAN for M3);
            there FOCE-I's curvature biases the typical values (see
            ``docs/calibration.md``). About 3x the cost of an evaluation.
        bounds: ``{name: (lower, upper)}`` for estimated typical values (``-inf`` /
            ``inf`` for a side without bound): the typical value is held strictly
            inside them by its outer coordinate (``lower + e^z``, ``upper - e^z`` or
            ``lower + (upper - lower) sigmoid(z)``, NONMEM's way with bounded THETAs),
            so the optimiser cannot leave them; an estimate that ends within 0.1 % of a
            bound is named in ``message`` and ``at_bounds``.

    Returns:
        A :class:`PopulationFitResult`.

    Raises:
        ValueError: unknown names, an Omega option other than diagonal/full, bounds
            that are not ``lower < upper`` inside the parameter's admissible range, on
            a typical value that is not estimated, or that do not contain its initial
            value, or covariate effects the data cannot support (a missing column, a factor that
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
    theta_bounds = check_bounds(model, bounds, estimate, pop.typical)
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
    laplacian = cmode != "none" if laplacian is None else bool(laplacian)
    if iov_var:
        refuse_varying_iov(pop, iov_names, fd.varying)
    n_occ = fd.occasions.k if iov_var else 0
    occ = jnp.asarray(fd.occasions.times) if iov_var else None
    spec = make_spec(
        model, solver, pop.iiv, errors, outputs, iov=iov_names, n_occ=n_occ,
        **spec_censoring(fd, censoring),
    )  # fmt: skip
    n_sigma = sum(len(e.names) for e in errors)
    effects, slots, coef0 = covariate_model(pop, fd, model, estimate)
    lay = Layout(
        estimate, tuple(pop.iiv), omega == "full", n_sigma, slots, iov_names, n_occ, theta_bounds
    )
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
        val, grad = ofv_and_grad(
            spec, lay, base, factors, jnp.asarray(phi), eta, ev, ts, y, mask, occ, laplacian
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
        v, g = ofv_and_grad(
            spec, lay, base, factors, jnp.asarray(p), e, ev, ts, y, mask, occ, laplacian
        )
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

    fitted = fitted_population(model, pop, {**base, **theta}, coefs, om)
    ind, cw, n_obs, n_cens = posthoc(
        model,
        fd,
        fitted,
        errs_fit,
        solver=solver,
        censoring=censoring,
        iov=iov_fit or None,
        occasion_column=occasion_column,
    )
    m2ll = ofv + n_obs * LOG_2PI
    n_par = P
    at_bounds = [q for q, lo, hi in theta_bounds if at_bound(theta[q], lo, hi)]
    note = f"; estimate(s) at a bound: {', '.join(at_bounds)}" if at_bounds else ""
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
        f"decrement g'H^-1g = {dec:.3g} (tolerance {outer_tol:g})" + note,
        newton_decrement=dec,
        errors=errs_fit,
        censoring=cmode,
        n_censored=n_cens,
        laplacian=laplacian,
        covariate_effects=cov_est,
        omega_iov=iov_fit,
        bounds={q: (lo, hi) for q, lo, hi in theta_bounds},
        at_bounds=at_bounds,
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
