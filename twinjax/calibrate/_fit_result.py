"""The result of individual (MAP) fits: :class:`FitResult` (estimates, Laplace
uncertainty, predictions, residuals, shrinkage) and its tables; made by
:func:`~twinjax.calibrate.fit_individual`."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..ode import Model
from ..population import Population
from ..solve._base import AbstractSolver
from ._data import FitData
from ._residual import ErrorModel


@dataclasses.dataclass(eq=False)
class FitResult:
    """Individual (MAP) fits of ``N`` subjects: the twins.

    Attributes:
        ids: subject IDs.
        names: parameters with random effects (the fitted ones), order of ``etas``.
        params: ``{name: (N,)}`` MAP estimates of every model parameter (natural scale).
        etas: ``(N, k)`` MAP random effects (unconstrained coordinates).
        cov_eta: ``(N, k, k)`` Laplace posterior covariance of the etas.
        se: ``{name: (N,)}`` standard errors on the natural scale (delta method).
        ci95: ``{name: ((N,), (N,))}`` 95 % intervals (transformed from the
            unconstrained scale, so they stay inside the parameter's bounds).
        corr: ``(N, k, k)`` posterior correlations of the fitted parameters.
        objective: ``(N,)`` the MAP objective ``-2 log p(y, eta)`` without constants.
        converged: ``(N,)`` bool; False for a subject that failed or did not converge.
        status: ``(N,)`` simulation status code at the estimate (0 = ok).
        n_iter: ``(N,)`` iterations used.
        times, dv, mask: ``(N, T)`` the observations (``dv`` meaningful where ``mask``).
        pred: ``(N, T)`` population predictions (eta = 0).
        ipred: ``(N, T)`` individual predictions.
        iwres: ``(N, T)`` individual weighted residuals ``(y - ipred) / sd`` (on the
            log scale for a log error model; NaN where ``mask`` is False).
        shrinkage: ``{name: float}`` eta-shrinkage ``1 - SD(eta) / omega`` over the
            converged subjects.
        model, population, error, solver, output: what was fitted (with several
            outputs: the first output and its error model).
        outputs: the fitted outputs; errors: ``{output: ErrorModel}``.
        censoring: ``"none"``, ``"m3"`` or ``"m4"``; censored: ``(N, T)`` bool, the
            censored records (their ``dv`` is the limit, their IWRES NaN).
        typical: ``{name: (N,)}`` covariate-adjusted typical values; a parameter with
            an effect of a time-varying covariate is a :class:`~twinjax.Piecewise`
            ``(N, C)`` on the records' times.
        varying: ``{name: Piecewise}`` the individual estimates of those parameters
            over time; ``params``, ``se`` and ``ci95`` give their values at time 0
            (the first record's covariates, NONMEM's convention).
        iov: ``{name: variance}`` the IOV variances (the kappas' prior) of a fit with
            inter-occasion variability (empty otherwise). ``params``, ``se`` and
            ``ci95`` of an IOV parameter are then its value without kappa
            (``g^-1(g(TV) + eta)``), ``varying`` its value on each occasion.
        kappas: ``(N, m, K)`` MAP kappas of the ``m`` IOV parameters on each subject's
            ``K`` occasions (0 on padding occasions); cov_kappa: ``(N, m K, m K)``
            their Laplace covariance (parameter by parameter, occasion by occasion);
            cov_eta_kappa: ``(N, k, m K)`` the Laplace covariance of the etas with
            them (the off-diagonal block of the joint ``2 H^-1`` at the mode).
        occasions: a DataFrame, one row per subject and occasion: ``ID``, the
            occasion column, ``START`` (the time the occasion starts, on the fit's
            evaluation time scale), ``kappa_P`` and the individual ``P`` on it.
    """

    ids: list
    names: tuple
    params: dict
    etas: np.ndarray
    cov_eta: np.ndarray
    se: dict
    ci95: dict
    corr: np.ndarray
    objective: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    n_iter: np.ndarray
    times: np.ndarray
    dv: np.ndarray
    mask: np.ndarray
    pred: np.ndarray
    ipred: np.ndarray
    iwres: np.ndarray
    shrinkage: dict
    model: Model
    population: Population
    error: ErrorModel
    solver: AbstractSolver
    output: str
    data: FitData
    typical: dict
    outputs: tuple = ()
    errors: dict = dataclasses.field(default_factory=dict)
    censoring: str = "none"
    varying: dict = dataclasses.field(default_factory=dict)
    iov: dict = dataclasses.field(default_factory=dict)
    kappas: np.ndarray | None = None
    cov_kappa: np.ndarray | None = None
    cov_eta_kappa: np.ndarray | None = None
    occasions: object = None

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def censored(self) -> np.ndarray:
        """``(N, T)`` bool: the censored records used in the fit."""
        return self.data.censored

    def index(self, subject=None) -> int:
        """The position of ``subject`` (an ID; default: the only subject)."""
        if subject is None:
            if self.n != 1:
                raise ValueError(f"this fit has {self.n} subjects: name one with subject=ID")
            return 0
        if subject in self.ids:
            return self.ids.index(subject)
        raise KeyError(f"no subject {subject!r}; IDs are {self.ids}")

    def to_dataframe(self):
        """One row per subject: estimates, SEs, 95 % intervals, objective, flags."""
        import pandas as pd

        df = pd.DataFrame(index=pd.Index(self.ids, name="ID"))
        for k in self.names:
            df[k] = np.asarray(self.params[k])
            df[f"SE_{k}"] = np.asarray(self.se[k])
            df[f"LO95_{k}"] = np.asarray(self.ci95[k][0])
            df[f"HI95_{k}"] = np.asarray(self.ci95[k][1])
        for i, k in enumerate(self.names):
            df[f"ETA_{k}"] = self.etas[:, i]
        df["OBJ"] = self.objective
        df["converged"] = self.converged
        df["status"] = self.status
        df["n_iter"] = self.n_iter
        return df

    def observations(self):
        """A long table: ID, TIME, DV, PRED, IPRED, IWRES (used observations only),
        and ``OUTPUT`` (several outputs) and ``CENS`` (censored data; DV is then the
        limit)."""
        import pandas as pd

        rows = np.nonzero(self.mask)
        cols = dict(
            ID=np.asarray(self.ids, dtype=object)[rows[0]],
            TIME=self.times[rows],
            DV=self.dv[rows],
            PRED=self.pred[rows],
            IPRED=self.ipred[rows],
            IWRES=self.iwres[rows],
        )
        fd = self.data
        if len(self.outputs) > 1 and fd.out is not None:
            cols["OUTPUT"] = np.asarray(self.outputs, dtype=object)[fd.out[rows]]
        if self.censoring != "none" and fd.cens is not None:
            cols["CENS"] = fd.cens[rows]
        return pd.DataFrame(cols)

    def forecast(
        self, regimen, times, *, n_samples: int = 500, key=None, subject=None, level: float = 0.9
    ):
        """Forecast a new regimen for one subject; see :func:`twinjax.calibrate.forecast`."""
        from ._forecast import forecast

        return forecast(
            self, regimen, times, n_samples=n_samples, key=key, subject=subject, level=level
        )

    def __repr__(self) -> str:
        return (
            f"FitResult(n={self.n}, params={list(self.names)}, "
            f"converged={int(np.sum(self.converged))}/{self.n}, error={self.error!r})"
        )
