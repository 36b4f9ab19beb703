"""Likelihood profiles of FOCE-I population fits.

The profile of a parameter is the FOCE-I objective minimised over all the other
population parameters with that one fixed, on a grid of values. The likelihood-based
confidence interval is where the profile crosses ``OFV_min + chi2_1(level)`` (3.84 for
95 %), interpolated linearly between grid points.

``fit_population`` fixes typical values (``estimate=``) but not Omega or sigma elements,
so the refits here run their own outer optimisation on the FOCE-I objective of
``_nlme.py`` (the same inner modes, exact total gradient and outer vector ``phi``): the
profiled parameter's coordinate of ``phi`` is held fixed and the others are minimised
by BFGS (SciPy), preconditioned by the fit's Hessian (the R matrix) and warm-started
from the neighbouring grid point, walking outwards from the estimate.

Profiled parameters: typical values, estimated covariate coefficients, SIGMA SDs,
the Omega variances of a diagonal Omega (with ``omega="full"``: the first one only,
whose log-Cholesky coordinate is ``log(OMEGA)/2``) and the inter-occasion variances
``OMEGA_IOV(P)`` of a fit with IOV (coordinate ``log(OMEGA_IOV)/2``; the kappas of all
occasions are re-estimated with the etas at every refit).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from ._covstep import Problem

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Profile", "plot_profile", "profile_likelihood"]


def _chi2_1(level: float) -> float:
    from scipy.stats import chi2

    return float(chi2.ppf(level, 1))


def _coordinate(prob: Problem, param: str):
    """``(j, to_phi, from_phi, (lower, upper))`` of a parameter label."""
    lay, model = prob.lay, prob.model
    nt, nc, no = len(lay.theta), len(lay.cov), lay.n_omega
    labels = prob.labels
    if param not in labels:
        raise ValueError(f"param {param!r} is not a fitted parameter; choose one of {labels}")
    i = labels.index(param)
    if i < nt:
        q = lay.theta[i]
        p = next(pp for pp in model.params if pp.name == q)
        held = lay.theta_coef(q)
        if held is not None:  # a typical value held inside the fit's bounds
            c = held
            return i, c.to_z, lambda z: float(c.from_z(np.asarray(z, float))), (c.lower, c.upper)

        def to_phi(v):
            return float(model.to_unconstrained({q: np.asarray(v, float)}, (q,))[q])

        def from_phi(z):
            return float(model.from_unconstrained({q: np.asarray(z, float)})[q])

        return i, to_phi, from_phi, (float(p.lower), float(p.upper))
    if i < nt + nc:
        c = lay.cov[i - nt]
        return i, c.to_z, lambda z: float(c.from_z(np.asarray(z, float))), (c.lower, c.upper)
    if i < nt + nc + no:
        rows, cols = lay.tril()
        a, b = int(rows[i - nt - nc]), int(cols[i - nt - nc])
        if a != b or (lay.full_omega and a != 0):
            raise ValueError(
                f"param {param!r}: only typical values, covariate coefficients, SIGMA SDs "
                "and the variances of a diagonal Omega (with a full Omega: the first one) "
                "can be profiled"
            )
        return (
            i,
            lambda v: 0.5 * float(np.log(v)),
            lambda z: float(np.exp(2.0 * z)),
            (0.0, np.inf),
        )
    if i < nt + nc + no + len(lay.iov):  # OMEGA_IOV(P): phi holds log omega_iov
        return (
            i,
            lambda v: 0.5 * float(np.log(v)),
            lambda z: float(np.exp(2.0 * z)),
            (0.0, np.inf),
        )
    return i, lambda v: float(np.log(v)), lambda z: float(np.exp(z)), (0.0, np.inf)


@dataclasses.dataclass(eq=False)
class Profile:
    """A likelihood profile.

    Attributes:
        parameter: the profiled parameter (a label of the fit's ``estimates``).
        values: ``(n,)`` the fixed values (natural scale), sorted.
        ofv: ``(n,)`` the objective minimised over the other parameters.
        delta_ofv: ``ofv - ofv_min``.
        ofv_min: the reference minimum (the fit's OFV, or the profile's if lower).
        estimate: the fit's estimate of the parameter.
        ci: ``(lower, upper)`` where the profile crosses ``threshold`` (NaN on a side
            where the grid does not reach it: extend ``values``).
        threshold: ``chi2_1(level)`` (3.84 for 95 %); level: the CI level.
        converged: ``(n,)`` whether each refit's Newton decrement (with the fit's R
            matrix) is below ``tol``.
        others: DataFrame of every parameter's natural-scale value at each grid point.
        n_evaluations: objective evaluations used.
    """

    parameter: str
    values: np.ndarray
    ofv: np.ndarray
    delta_ofv: np.ndarray
    ofv_min: float
    estimate: float
    ci: tuple
    threshold: float
    level: float
    converged: np.ndarray
    others: pd.DataFrame
    n_evaluations: int

    def plot(self, ax=None):
        """The profile as a matplotlib figure (see :func:`plot_profile`)."""
        return plot_profile(self, ax=ax)

    def __repr__(self) -> str:
        lo, hi = self.ci
        return (
            f"Profile({self.parameter}: estimate {self.estimate:.4g}, "
            f"{100 * self.level:.0f}% likelihood CI [{lo:.4g}, {hi:.4g}], "
            f"{self.values.size} points)"
        )


def _crossing(x, d, est, thr, side):
    """Linear interpolation of the first crossing of ``thr`` walking from ``est``."""
    sel = (x < est) if side < 0 else (x > est)
    xs, ds = x[sel], d[sel]
    order = np.argsort(-xs) if side < 0 else np.argsort(xs)
    xs, ds = xs[order], ds[order]
    x0, d0 = est, 0.0
    for x1, d1 in zip(xs, ds):
        if not np.isfinite(d1):
            return np.nan
        if d1 >= thr:
            if d1 == d0:
                return float(x1)
            return float(x0 + (thr - d0) * (x1 - x0) / (d1 - d0))
        x0, d0 = x1, d1
    return np.nan


def profile_likelihood(
    fit,
    data=None,
    param: str | None = None,
    *,
    values=None,
    n: int = 11,
    width: float = 3.0,
    level: float = 0.95,
    gtol: float = 1e-3,
    tol: float = 1e-3,
    max_iter: int = 100,
    censoring=None,
    lloq=None,
    dvid=None,
    output_column: str = "DVID",
    occasion_column: str | None = None,
) -> Profile:
    """Likelihood profile and likelihood-based CI of one parameter of a FOCE-I fit.

    Arguments:
        fit: a :class:`~twinjax.calibrate.PopulationFitResult`.
        data: the fit's data (``None``: the prepared data the fit keeps).
        param: a label of ``fit.estimates`` (``"CL"``, ``"OMEGA(CL,CL)"``,
            ``"OMEGA_IOV(CL)"``, ``"SIGMA_add"``, a covariate coefficient).
        values: the fixed values (natural scale). Default: ``n`` points evenly spaced in
            the parameter's unconstrained coordinate over the estimate ``+- width``
            standard errors (the fit's ``MATRIX=R`` SE), the estimate included.
        level: CI level (threshold ``chi2_1(level)``, 3.84 at 0.95).
        gtol: BFGS gradient tolerance of each refit (in coordinates scaled by the fit's
            R matrix); max_iter: BFGS iterations.
        tol: a refit has converged when its Newton decrement ``g' R^-1 g`` (with the
            fit's R restricted to the free parameters; OFV units) is below ``tol``.
        censoring, lloq, dvid, output_column: as given to ``fit_population``.
        occasion_column: a fit with inter-occasion variability: the data's occasion
            column (default: the one the fit read).

    Returns:
        A :class:`Profile` (``.plot()`` draws it).

    Raises:
        ValueError: an unknown parameter, one that cannot be profiled, values outside
            the parameter's bounds or not finite, ``n < 3``, or a level not in (0, 1),
            before anything is compiled.
    """
    import pandas as pd
    import scipy.optimize as so

    if param is None:
        raise ValueError("param: name the parameter to profile (a label of fit.estimates)")
    if not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if values is None and (int(n) != n or n < 3):
        raise ValueError(f"n must be an integer >= 3, got {n!r}")
    if values is None and not (np.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number of SEs, got {width!r}")
    if param not in list(fit.estimates.index):
        raise ValueError(
            f"param {param!r} is not a fitted parameter; choose one of {list(fit.estimates.index)}"
        )
    if values is not None:
        vals = np.atleast_1d(np.asarray(values, float))
        if vals.size == 0:
            raise ValueError("values is empty")
    prob = Problem.from_fit(
        fit,
        data,
        censoring=censoring,
        lloq=lloq,
        dvid=dvid,
        output_column=output_column,
        occasion_column=occasion_column,
    )
    j, to_phi, from_phi, (lo, hi) = _coordinate(prob, param)
    phi_hat = prob.phi_hat
    P = prob.size
    cov_phi = np.asarray(fit.cov_phi, float)
    have_cov = cov_phi.shape == (P, P) and np.all(np.isfinite(cov_phi))
    R = 2.0 * np.linalg.inv(cov_phi) if have_cov else prob.hessian(phi_hat)
    if values is None:
        se_j = np.sqrt(2.0 / R[j, j]) if not have_cov else np.sqrt(cov_phi[j, j])
        z = phi_hat[j] + width * se_j * np.linspace(-1.0, 1.0, int(n) | 1)
        vals = np.asarray([from_phi(zz) for zz in z])
    else:
        bad = ~np.isfinite(vals) | (vals <= lo) | (vals >= hi)
        if bad.any():
            raise ValueError(
                f"values for {param!r}: {vals[bad].tolist()} outside its domain ({lo}, {hi})"
            )
    est = float(prob.natural(phi_hat)[j])
    vals = np.unique(np.concatenate([vals, [est]]))
    zs = np.asarray([to_phi(v) for v in vals])

    free = np.asarray([i for i in range(P) if i != j])
    Rf = R[np.ix_(free, free)]
    try:
        L = np.linalg.cholesky(np.linalg.inv(Rf))
    except np.linalg.LinAlgError:
        L = np.diag(1.0 / np.sqrt(np.maximum(np.abs(np.diag(Rf)), 1e-8)))
    count = [0]

    def refit(zj, start, eta0):
        state = {"eta": eta0, "best": np.inf, "best_eta": eta0}

        def full(u):
            p = np.array(phi_hat)
            p[free] = start + L @ u
            p[j] = zj
            return p

        def fun(u):
            count[0] += 1
            v, g, eta = prob.value_and_grad(full(u), state["eta"])
            if not (np.isfinite(v) and np.all(np.isfinite(g))):
                return 1e12, np.zeros_like(u)
            if v < state["best"]:
                state["best"], state["best_eta"], state["eta"] = v, eta, eta
            return v, L.T @ g[free]

        res = so.minimize(
            fun,
            np.zeros(free.size),
            jac=True,
            method="BFGS",
            options=dict(maxiter=max_iter, gtol=gtol),
        )
        p = full(res.x)
        v, g, eta = prob.value_and_grad(p, state["best_eta"])
        gu = L.T @ g[free]  # g' R_ff^-1 g: the Newton decrement with the fit's Hessian
        ok = bool(np.isfinite(v) and np.all(np.isfinite(gu)) and gu @ gu < tol)
        return p, v, ok, eta

    i0 = int(np.argmin(np.abs(zs - phi_hat[j])))
    out_phi = np.full((vals.size, P), np.nan)
    out_ofv = np.full(vals.size, np.nan)
    out_ok = np.zeros(vals.size, bool)
    for direction in (range(i0, vals.size), range(i0 - 1, -1, -1)):
        start, eta0 = phi_hat[free], prob.eta_hat
        if direction.start == i0 - 1 and np.isfinite(out_ofv[i0]):
            start, eta0 = out_phi[i0][free], prob.eta_hat
        for i in direction:
            p, v, ok, eta = refit(zs[i], start, eta0)
            out_phi[i], out_ofv[i], out_ok[i] = p, v, ok
            if np.isfinite(v):
                start, eta0 = p[free], eta
    ofv_hat = prob.value_and_grad(phi_hat)[0]
    ofv_min = float(min(ofv_hat, np.nanmin(out_ofv)))
    delta = out_ofv - ofv_min
    thr = _chi2_1(level)
    ci = (_crossing(vals, delta, est, thr, -1), _crossing(vals, delta, est, thr, +1))
    nat = np.asarray(
        [prob.natural(p) if np.all(np.isfinite(p)) else np.full(P, np.nan) for p in out_phi]
    )
    others = pd.DataFrame(nat, columns=prob.labels)
    others.insert(0, "ofv", out_ofv)
    others.index = pd.Index(vals, name=param)
    return Profile(
        parameter=param,
        values=vals,
        ofv=out_ofv,
        delta_ofv=delta,
        ofv_min=ofv_min,
        estimate=est,
        ci=ci,
        threshold=thr,
        level=level,
        converged=out_ok,
        others=others,
        n_evaluations=count[0],
    )


def plot_profile(profile: Profile, ax=None):
    """Draw a profile: ``delta OFV`` against the value, the threshold, the CI and the
    estimate. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
    else:
        fig = ax.figure
    ax.plot(profile.values, profile.delta_ofv, "o-", color="C0", label="profile")
    ax.axhline(
        profile.threshold, color="C3", ls="--", lw=1, label=f"ΔOFV = {profile.threshold:.2f}"
    )
    ax.axvline(profile.estimate, color="k", lw=0.8, label="estimate")
    for x in profile.ci:
        if np.isfinite(x):
            ax.axvline(x, color="C3", lw=0.8, ls=":")
    lo, hi = profile.ci
    ax.set_xlabel(profile.parameter)
    ax.set_ylabel("ΔOFV")
    ax.set_title(
        f"{profile.parameter}: {100 * profile.level:.0f}% CI [{lo:.4g}, {hi:.4g}]", fontsize=10
    )
    ax.legend(fontsize=8)
    return fig
