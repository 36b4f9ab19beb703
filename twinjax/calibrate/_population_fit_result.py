"""The result of a FOCE-I population fit (:class:`PopulationFitResult`, also the base
of SAEM's result) and the steps every population fit ends with: the fitted
:class:`~twinjax.Population` (:func:`fitted_population`) and the post-hoc MAP fit at
it with its CWRES and record counts (:func:`posthoc`)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from ..ode import Model
from ..population import Population
from ..solve._base import AbstractSolver
from ._diagnostics import cwres
from ._fit_result import FitResult
from ._map import fit_individual
from ._residual import ErrorModel

if TYPE_CHECKING:
    import pandas as pd


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
        laplacian: the objective's log-determinant used the exact curvature
            (``fit_population(laplacian=)``; :attr:`method` ``"Laplace"``).
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
            ``individual.occasions``. The covariance step, profiles and bootstrap
            treat ``OMEGA_IOV(P)`` as a parameter like the others (the kappas among
            the modes); ``cwres`` does not model the kappas yet.
        bounds: ``{name: (lower, upper)}`` the bounds the typical values were held
            inside (``fit_population(bounds=)``; empty: none); at_bounds: the names of
            the estimates that ended within 0.1 % of one of their bounds.
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
    laplacian: bool = False
    covariate_effects: dict = dataclasses.field(default_factory=dict)
    omega_iov: dict = dataclasses.field(default_factory=dict)
    bounds: dict = dataclasses.field(default_factory=dict)
    at_bounds: list = dataclasses.field(default_factory=list)

    @property
    def method(self) -> str:
        """``"FOCE-I"``, or ``"Laplace"`` for the exact curvature (``laplacian``)."""
        return "Laplace" if self.laplacian else "FOCE-I"

    def summary(self) -> str:
        """A short text summary (estimates table and OFV)."""
        return (
            f"{self.method} fit: {self.n_subjects} subjects, {self.n_obs} observations"
            + (f", {self.n_censored} censored ({self.censoring})" if self.n_censored else "")
            + "\n"
            f"OFV (NONMEM, no constant) = {self.ofv:.3f}; -2LL = {self.minus2ll:.3f}; "
            f"AIC = {self.aic:.3f}; converged = {self.converged}\n" + self.estimates.to_string()
        )

    def __repr__(self) -> str:
        th = ", ".join(f"{k}={v:.4g}" for k, v in {**self.theta, **self.covariate_effects}.items())
        return f"PopulationFitResult({th}; OFV={self.ofv:.3f})"


def fitted_population(model: Model, pop: Population, typical: dict, coefs, omega) -> Population:
    """``pop`` with fitted typical values, Omega and estimated covariate coefficients
    (``coefs``: the estimated effects' coefficients, in the order of
    ``pop.covariates``)."""
    fitted_covs, off = [], 0
    for c in pop.covariates:
        if c.estimate:
            m = len(c.coefficients())
            c = c.with_coefficients(coefs[off : off + m])
            off += m
        fitted_covs.append(c)
    return Population(
        model,
        typical=typical,
        covariates=fitted_covs,
        omega=omega,
        iiv=list(pop.iiv),
    )


def posthoc(
    model: Model,
    fd,
    fitted: Population,
    errors: dict,
    *,
    solver: AbstractSolver,
    censoring: str | None,
    iov: dict | None = None,
    occasion_column: str = "OCC",
) -> tuple:
    """The post-hoc MAP fit of the data ``fd`` at a population fit's estimates
    (``errors``: ``{output: fitted ErrorModel}``): ``(FitResult, CWRES, n_obs,
    n_censored)``, ``n_obs`` counting the uncensored observations."""
    outputs = list(errors)
    ind = fit_individual(
        model,
        fd,
        fitted,
        errors[outputs[0]] if len(outputs) == 1 else errors,
        output=outputs[0] if len(outputs) == 1 else None,
        solver=solver,
        censoring=censoring,
        iov=iov,
        occasion_column=occasion_column,
    )
    cw = cwres(ind)
    n_cens = int(np.sum(fd.censored))
    n_obs = int(np.sum(fd.mask)) - n_cens
    return ind, cw, n_obs, n_cens
