"""Covariance step of a FOCE-I population fit: NONMEM's R, S and sandwich matrices.

NONMEM's ``$COVARIANCE`` (NONMEM Users Guide, help entry ``$COVARIANCE``, "MATRIX=c")
defines, in the parameters of the estimation:

- ``R``: the Hessian of the objective function value (``OFV = -2 log L``);
- ``S``: the cross-product gradient matrix ``sum_i g_i g_i'``, ``g_i`` the gradient of
  subject ``i``'s contribution to the OFV;
- the covariance of the estimates: ``R^-1 S R^-1`` by default (the sandwich),
  ``2 R^-1`` with ``MATRIX=R`` and ``4 S^-1`` with ``MATRIX=S``. (The factors come
  from the OFV scale: ``R / 2`` and ``S / 4`` are the observed information and the
  gradient cross-product of ``-log L``, which is also why NONMEM's ``PRINT=R`` shows
  ``.5*R`` and ``PRINT=S`` shows ``.25*S``; in the sandwich they cancel.)

Here the parameters are the outer vector ``phi`` of :func:`fit_population`
(unconstrained typical values and covariate coefficients, log-Cholesky Omega, the log
SDs of the inter-occasion variances ``OMEGA_IOV``, log sigma); the covariance is mapped
to the natural scale (the ``estimates`` table's parameters) by the delta method, exactly
as ``fit_population`` does for ``MATRIX=R``. A linear map commutes with all three forms,
so the natural-scale sandwich is the sandwich of the natural-scale matrices, but each SE
still depends on ``phi``'s parametrisation only through the delta method's
linearisation, as NONMEM's does on its own.

Each subject's gradient ``g_i`` is the exact total derivative of its FOCE-I term (its
mode follows ``phi`` through the implicit function theorem, as in ``_nlme.py``), in
forward mode, batched over subjects; ``R`` is the central finite difference of the
summed gradient (step ``1e-4`` in ``phi``), the matrix ``fit_population`` inverts.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..ode import Model
from . import _nlme as nlme
from ._map import as_population, fit_censoring, make_spec, prepare_data, resolve_outputs
from ._nlme_outer import iov_variances

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CovarianceStep", "covariance_step"]

KINDS = ("sandwich", "R", "S")


# ============================================================================ problem
@eqx.filter_jit
def _subject_terms_and_grads(
    spec, lay, base, factors, phi, eta, ev, ts, y, mask, occ=None, laplacian=False
):
    """Per-subject FOCE-I terms ``(N,)`` and their total gradients ``(N, P)`` in ``phi``
    (forward mode, one tangent per element of ``phi``); ``occ``: the ``(N, K)`` occasion
    start times of a fit with IOV (the kappas are among the modes ``eta``)."""
    hess = nlme.exact_hessian(spec, lay, base, factors, phi, eta, ev, ts, y, mask, occ)

    def F(p):
        return nlme.ofv_terms(
            spec, lay, base, factors, p, eta, ev, ts, y, mask, hess, occ, laplacian
        )

    eye = jnp.eye(phi.shape[0], dtype=phi.dtype)
    vals, tangents = jax.vmap(lambda v: jax.jvp(F, (phi,), (v,)))(eye)
    return vals[0], tangents.T


@eqx.filter_jit
def _batched_modes(spec, lay, base, factors, phis, eta0, ev, ts, y, mask, max_iter, tol, occ=None):
    """Modes ``(B, N, k)`` for ``B`` outer vectors at once (``vmap`` of the inner fit)."""

    def one(phi, e0):
        return nlme.inner_modes(
            spec, lay, base, factors, phi, e0, ev, ts, y, mask, max_iter, tol, occ
        )

    out = jax.vmap(one)(phis, eta0)
    return out["eta"], out["ok"]


@eqx.filter_jit
def _batched_terms_and_grads(
    spec, lay, base, factors, phis, etas, ev, ts, y, mask, occ=None, laplacian=False
):
    """``(B, N)`` per-subject terms and ``(B, N, P)`` gradients for ``B`` outer vectors."""

    def one(phi, eta):
        return _subject_terms_and_grads(
            spec, lay, base, factors, phi, eta, ev, ts, y, mask, occ, laplacian
        )

    return jax.vmap(one)(phis, etas)


@dataclasses.dataclass
class Problem:
    """The FOCE-I objective of a fit, rebuilt from the fit and its data as
    ``fit_population`` built it (same spec, layout, covariate factors, outer vector).

    With inter-occasion variability (``fit.omega_iov``) the outer vector holds the log
    IOV SDs (``OMEGA_IOV(P)`` on the natural scale) and each subject's modes are
    ``[eta | kappa]`` (all its occasions), as in ``fit_population``; ``occ`` holds the
    ``(N, K)`` occasion start times (``None`` without IOV).
    """

    fit: nlme.PopulationFitResult
    model: Model
    spec: object
    lay: nlme.Layout
    base: dict
    factors: object
    ev: object
    ts: object
    y: object
    mask: object
    n: int
    k: int
    phi_hat: np.ndarray
    labels: list
    eta_hat: jax.Array
    inner_max_iter: int = 200
    inner_tol: float = 1e-10
    occ: object = None
    laplacian: bool = False

    @classmethod
    def from_fit(
        cls,
        fit,
        data,
        *,
        censoring=None,
        lloq=None,
        dvid=None,
        output_column: str = "DVID",
        occasion_column: str | None = None,
    ) -> Problem:
        if not isinstance(fit, nlme.PopulationFitResult):
            raise TypeError(
                f"expected a PopulationFitResult (from fit_population), got {type(fit).__name__}"
            )
        if type(fit).__name__ == "SAEMResult":
            raise TypeError(
                "a SAEM fit: the covariance step, profiles and bootstrap here use the FOCE-I "
                "objective, whose optimum SAEM's estimates are not; SAEM's own SEs (Louis) "
                "are in fit.estimates, or fit the model with fit_population"
            )
        pop = fit.population
        model = pop.model
        pop = as_population(model, pop)
        iov = dict(fit.omega_iov or {})
        iov_names = tuple(iov)
        ind = fit.individual
        if iov and occasion_column is None:
            occ_fit = getattr(ind.data, "occasions", None)
            occasion_column = occ_fit.column if occ_fit is not None else "OCC"
        outputs_fit = list(fit.errors) if fit.errors else [ind.output]
        if len(outputs_fit) == 1:
            error = fit.errors.get(outputs_fit[0], fit.error) if fit.errors else fit.error
            output = outputs_fit[0]
        else:
            error, output = dict(fit.errors), None
        outputs, errors = resolve_outputs(model, error, output)
        if data is None:  # the fit's own prepared data
            data = ind.data
            if censoring is None and fit.censoring == "m4":
                censoring = "m4"
        fd = prepare_data(
            model,
            data,
            error,
            output=output,
            lloq=lloq,
            censoring=censoring,
            dvid=dvid,
            output_column=output_column,
            occasion_column=occasion_column if iov else None,
        )
        n_cens = int(np.sum(fd.censored))
        n_obs = int(np.sum(fd.mask)) - n_cens
        if fd.n != fit.n_subjects or n_obs != fit.n_obs:
            raise ValueError(
                f"data: {fd.n} subjects and {n_obs} observations, but the fit had "
                f"{fit.n_subjects} subjects and {fit.n_obs} observations; pass the data "
                "(and censoring=, lloq=, dvid=) the fit was made with"
            )
        cmode = fit_censoring(fd, censoring)
        if cmode != fit.censoring:
            raise ValueError(
                f"censoring: the data give {cmode!r} but the fit used {fit.censoring!r}; pass "
                "the censoring= and lloq= of the fit"
            )
        n_occ = fd.occasions.k if iov else 0
        kap = ind.kappas
        if iov and (kap is None or kap.shape[1:] != (len(iov_names), n_occ)):
            raise ValueError(
                f"the data give {n_occ} occasions per subject but the fit's kappas have shape "
                f"{None if kap is None else kap.shape}; pass the data (and occasion_column=) "
                "the fit was made with"
            )
        solver = ind.solver
        spec = make_spec(model, solver, pop.iiv, errors, outputs, cmode, iov_names, n_occ)
        n_sigma = sum(len(e.names) for e in errors)
        estimate = tuple(fit.theta)
        effects, slots, coef = nlme.covariate_model(pop, fd, model, estimate)
        labels = list(fit.estimates.index)
        full = any(
            lab.startswith("OMEGA(") and lab[6:-1].split(",")[0] != lab[6:-1].split(",")[1]
            for lab in labels
        )
        held = tuple((q, float(lo), float(hi)) for q, (lo, hi) in (fit.bounds or {}).items())
        lay = nlme.Layout(estimate, tuple(pop.iiv), full, n_sigma, slots, iov_names, n_occ, held)
        base = {kk: float(v) for kk, v in pop.typical.items()}
        N = fd.n
        factors = nlme.covariate_factors(pop, fd, effects)
        sigma = np.concatenate([np.asarray(e.sigma()) for e in errors])
        phi = nlme.pack_outer(
            model,
            lay,
            {kk: base[kk] for kk in estimate},
            fit.omega,
            sigma,
            coef,
            [iov[q] for q in iov_names],
        )
        eta = np.asarray(ind.etas, float).reshape(N, len(pop.iiv))
        if iov:  # [eta | kappa], kappa of parameter a on occasion o at column k + a K + o
            eta = np.concatenate([eta, np.asarray(kap, float).reshape(N, -1)], 1)
        eta_hat = jnp.asarray(np.nan_to_num(eta))
        return cls(
            fit=fit,
            model=model,
            spec=spec,
            lay=lay,
            base=base,
            factors=factors,
            ev=fd.ev,
            ts=jnp.asarray(fd.t_eval),
            y=fd.obs(),
            mask=jnp.asarray(fd.mask),
            n=N,
            k=spec.n_random,
            phi_hat=np.asarray(phi, float),
            labels=labels,
            eta_hat=eta_hat,
            occ=jnp.asarray(fd.occasions.times) if iov else None,
            laplacian=fit.laplacian,
        )

    @property
    def size(self) -> int:
        return self.lay.size

    def _args(self):
        return self.ev, self.ts, self.y, self.mask

    def modes(self, phi, eta0=None):
        """The subjects' modes at ``phi`` (warm start ``eta0``, default the fit's)."""
        eta0 = self.eta_hat if eta0 is None else eta0
        mi = jnp.asarray(self.inner_max_iter)
        out = nlme.inner_modes(
            self.spec,
            self.lay,
            self.base,
            self.factors,
            jnp.asarray(phi),
            eta0,
            *self._args(),
            mi,
            self.inner_tol,
            self.occ,
        )
        return out["eta"]

    def subject_terms(self, phi, eta0=None):
        """``(ofv_i (N,), g_i (N, P), modes)`` at ``phi``."""
        eta = self.modes(phi, eta0)
        v, g = _subject_terms_and_grads(
            self.spec,
            self.lay,
            self.base,
            self.factors,
            jnp.asarray(phi),
            eta,
            *self._args(),
            self.occ,
            self.laplacian,
        )
        return np.asarray(v), np.asarray(g), eta

    def value_and_grad(self, phi, eta0=None):
        v, g, eta = self.subject_terms(phi, eta0)
        return float(np.sum(v)), g.sum(0), eta

    def hessian(self, phi, h: float = 1e-4):
        """Central finite differences of the exact gradient (NONMEM's R in ``phi``)."""
        P = self.size
        H = np.zeros((P, P))
        for j in range(P):
            e = np.zeros(P)
            e[j] = h
            gp = self.value_and_grad(phi + e)[1]
            gm = self.value_and_grad(phi - e)[1]
            H[:, j] = (gp - gm) / (2 * h)
        return 0.5 * (H + H.T)

    # ----------------------------------------------------------------- batched
    def batched_modes(self, phis, eta0):
        mi = jnp.asarray(self.inner_max_iter)
        return _batched_modes(
            self.spec,
            self.lay,
            self.base,
            self.factors,
            jnp.asarray(phis),
            eta0,
            *self._args(),
            mi,
            self.inner_tol,
            self.occ,
        )

    def batched_terms(self, phis, eta0):
        """``(B, N)`` terms, ``(B, N, P)`` gradients and ``(B, N, k)`` modes at ``phis``."""
        eta, _ = self.batched_modes(phis, eta0)
        v, g = _batched_terms_and_grads(
            self.spec,
            self.lay,
            self.base,
            self.factors,
            jnp.asarray(phis),
            eta,
            *self._args(),
            self.occ,
            self.laplacian,
        )
        return np.asarray(v), np.asarray(g), eta

    # ----------------------------------------------------------------- natural scale
    def natural_fn(self):
        model, lay = self.model, self.lay
        rows, cols = lay.tril()

        def natural(p):
            th, o, s = nlme.unpack_outer(model, lay, p)
            parts = [th[kk] for kk in lay.theta]
            return jnp.concatenate(
                [
                    jnp.stack(parts),
                    nlme.outer_coefs(lay, p),
                    o[rows, cols],
                    iov_variances(lay, p),
                    s,
                ]
            )

        return natural

    def natural(self, phi) -> np.ndarray:
        return np.asarray(self.natural_fn()(jnp.asarray(phi)))

    def natural_jacobian(self, phi) -> np.ndarray:
        return np.asarray(jax.jacfwd(self.natural_fn())(jnp.asarray(phi)))


# ============================================================================ result
@dataclasses.dataclass(eq=False)
class CovarianceStep:
    """The covariance step of a FOCE-I fit.

    Attributes:
        kind: ``"sandwich"`` (``R^-1 S R^-1``, NONMEM's default), ``"R"`` (``2 R^-1``)
            or ``"S"`` (``4 S^-1``).
        table: DataFrame indexed by parameter (the fit's ``estimates`` labels) with
            ``estimate``, ``se``, ``rse_pct`` on the natural scale (delta method).
        cov: ``(P, P)`` covariance of the natural-scale estimates (table order).
        cov_phi: ``(P, P)`` covariance of the outer vector ``phi``.
        R: Hessian of the OFV in ``phi``; S: ``sum_i g_i g_i'`` in ``phi``.
        subject_gradients: ``(N, P)`` the ``g_i`` (OFV units per unit of ``phi``).
        ofv: the objective at the estimates (recomputed; equals the fit's).
        gradient: the summed gradient at the estimates (near 0 at an optimum).
    """

    kind: str
    table: pd.DataFrame
    cov: np.ndarray
    cov_phi: np.ndarray
    R: np.ndarray
    S: np.ndarray
    subject_gradients: np.ndarray
    ofv: float
    gradient: np.ndarray
    labels: list

    @property
    def correlation(self) -> np.ndarray:
        d = np.sqrt(np.diag(self.cov))
        return self.cov / np.outer(d, d)

    def __repr__(self) -> str:
        return f"CovarianceStep(kind={self.kind!r})\n" + self.table.to_string()


def _refuse_not_pd(name: str, M: np.ndarray, labels: list, hint: str) -> None:
    """Raise naming the parameters on the directions where ``M`` is not positive
    definite (the largest loadings of the eigenvectors of non-positive eigenvalues)."""
    w, V = np.linalg.eigh(0.5 * (M + M.T))
    tol = 1e-10 * max(1.0, float(np.max(np.abs(w))))
    bad = np.flatnonzero(~(w > tol))
    if bad.size == 0:
        return
    parts = []
    for b in bad:
        v = V[:, b]
        top = np.argsort(-np.abs(v))[:3]
        names = ", ".join(f"{labels[i]} ({v[i]:+.2f})" for i in top if abs(v[i]) > 0.1)
        parts.append(f"eigenvalue {w[b]:.3g} along {names}")
    raise np.linalg.LinAlgError(
        f"the {name} matrix is not positive definite: " + "; ".join(parts) + f". {hint}"
    )


def _table(prob: Problem, phi, cov_phi):
    import pandas as pd

    nat = prob.natural(phi)
    J = prob.natural_jacobian(phi)
    cov = J @ cov_phi @ J.T
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rse = 100 * se / np.abs(nat)
    table = pd.DataFrame(dict(parameter=prob.labels, estimate=nat, se=se, rse_pct=rse))
    return table.set_index("parameter"), cov


def covariance_step(
    fit,
    data=None,
    *,
    kind: str = "sandwich",
    h: float = 1e-4,
    censoring=None,
    lloq=None,
    dvid=None,
    output_column: str = "DVID",
    occasion_column: str | None = None,
) -> CovarianceStep:
    """NONMEM's covariance step for a FOCE-I fit: sandwich, ``MATRIX=R`` or ``MATRIX=S``.

    Arguments:
        fit: a :class:`~twinjax.calibrate.PopulationFitResult`.
        data: the data of the fit (the same ``Dataset``); ``None``: the prepared data
            the fit keeps (``fit.individual.data``).
        kind: ``"sandwich"`` (``R^-1 S R^-1``, NONMEM's default), ``"R"`` (``2 R^-1``,
            what ``fit_population`` reports) or ``"S"`` (``4 S^-1``).
        h: finite-difference step in ``phi`` for ``R``.
        censoring, lloq, dvid, output_column: as given to ``fit_population``.
        occasion_column: a fit with inter-occasion variability: the data's occasion
            column (default: the one the fit read). ``OMEGA_IOV(P)`` is then a parameter
            like the others (its outer coordinate is ``log omega_iov``) and the kappas
            of every occasion are among each subject's modes, as in ``fit_population``.

    Returns:
        A :class:`CovarianceStep` (table of estimate, SE, RSE % on the natural scale;
        the covariance matrices; ``R``, ``S`` and the subjects' gradients).

    Raises:
        ValueError: an unknown ``kind``, or data that are not the fit's (subject or
            observation counts differ), before anything is compiled.
        numpy.linalg.LinAlgError: ``R`` (for ``"R"`` and ``"sandwich"``) or ``S`` (for
            ``"S"``) is not positive definite; the message names the parameters along
            the offending directions.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"h must be a positive step, got {h!r}")
    prob = Problem.from_fit(
        fit,
        data,
        censoring=censoring,
        lloq=lloq,
        dvid=dvid,
        output_column=output_column,
        occasion_column=occasion_column,
    )
    phi = prob.phi_hat
    v, g, _ = prob.subject_terms(phi)
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(g))):
        bad = [str(i) for i, ok in zip(fit.individual.ids, np.isfinite(v)) if not ok]
        raise ValueError(
            f"the objective is not finite at the estimates for subject(s) ID {bad}; "
            "the covariance step needs every subject's term"
        )
    S = g.T @ g
    R = prob.hessian(phi, h)
    # the labels of phi's coordinates are those of the natural vector (same order)
    labels = prob.labels
    hint = (
        "The estimates are not a well-defined minimum in these parameters (over-"
        "parametrised, a variance near 0, or not converged): fix or remove them, or use "
        "a bootstrap"
    )
    if kind in ("R", "sandwich"):
        _refuse_not_pd("R (Hessian of the OFV)", R, labels, hint)
        Ri = np.linalg.inv(R)
        cov_phi = 2.0 * Ri if kind == "R" else Ri @ S @ Ri
    else:
        _refuse_not_pd(
            "S (cross-product gradient)",
            S,
            labels,
            f"With {prob.n} subjects and {prob.size} parameters S has rank at most "
            f"{min(prob.n, prob.size)}; use kind='R' or 'sandwich'",
        )
        cov_phi = 4.0 * np.linalg.inv(S)
    cov_phi = 0.5 * (cov_phi + cov_phi.T)
    table, cov = _table(prob, phi, cov_phi)
    return CovarianceStep(
        kind=kind,
        table=table,
        cov=cov,
        cov_phi=cov_phi,
        R=R,
        S=S,
        subject_gradients=g,
        ofv=float(np.sum(v)),
        gradient=g.sum(0),
        labels=labels,
    )
