"""Diagnostics: conditional weighted residuals (CWRES) and simulation-based checks.

References:
    - Hooker AC, Staatz CE, Karlsson MO. Conditional weighted residuals (CWRES): a
      model diagnostic for the FOCE method. Pharm Res 24:2187-2197, 2007.
    - Bergstrand M, Hooker AC, Wallin JE, Karlsson MO. Prediction-corrected visual
      predictive checks for diagnosing nonlinear mixed-effects models. AAPS J
      13:143-151, 2011 (VPC binning and percentiles).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._map import FitResult, Spec, f_and_jac, predict

__all__ = ["cwres", "simulate_replicates"]


def cwres(fit: FitResult) -> np.ndarray:
    """FOCE conditional weighted residuals of every observation.

    For subject ``i`` at its mode ``eta*``, the observations (on the error model's
    scale) are linearised as ``E = m(eta*) - J eta*`` and
    ``Cov = J Omega J' + diag(s(eta*)^2)``; ``CWRES = Cov^{-1/2} (y - E)`` with the
    Cholesky factor.

    Arguments:
        fit: a :class:`FitResult` (typically the post-hoc fit of a population fit).

    Returns:
        ``(N, T)`` CWRES, NaN where there is no observation or the subject failed.
    """
    spec = Spec(fit.model, fit.solver, fit.output, fit.names, fit.error)
    fd = fit.data
    tv = {k: jnp.asarray(v) for k, v in fit.typical.items()}
    eta = jnp.asarray(np.nan_to_num(fit.etas))
    f, J, _ = f_and_jac(spec, tv, eta, fd.ev, jnp.asarray(fd.t_eval))
    sigma = fit.error.sigma()
    m, s, dm, _ = fit.error.moments_and_slopes(f, sigma)
    Jm = np.asarray(dm[..., None] * J)
    m, s = np.asarray(m), np.asarray(s)
    yt = np.asarray(fit.error.observed(jnp.asarray(fd.dv)))
    omega = np.asarray(fit.population.omega)
    out = np.full(fd.dv.shape, np.nan)
    e = np.asarray(eta)
    for i in range(fd.n):
        sel = fd.mask[i]
        if not sel.any() or not np.isfinite(fit.objective[i]):
            continue
        Ji = Jm[i][sel]
        E = m[i][sel] - Ji @ e[i]
        C = Ji @ omega @ Ji.T + np.diag(s[i][sel] ** 2)
        try:
            L = np.linalg.cholesky(C)
        except np.linalg.LinAlgError:
            continue
        out[i, sel] = np.linalg.solve(L, yt[i][sel] - E)
    return out


def simulate_replicates(fit: FitResult, n_rep: int, key, *, residual: bool = True):
    """Replicates of the fitted dataset simulated from the (fitted) population.

    Every replicate draws new etas from ``N(0, Omega)`` for each subject (keeping the
    subject's covariates, regimen and sampling times) and, with ``residual``, new
    residual errors.

    Arguments:
        fit: a :class:`FitResult` whose ``population`` and ``error`` are the model to
            simulate (e.g. ``PopulationFitResult.individual``).
        n_rep: number of replicate datasets.
        key: a JAX PRNG key.
        residual: add residual error.

    Returns:
        ``(n_rep, N, T)`` simulated observations (natural scale).
    """
    fd = fit.data
    pop = fit.population
    spec = Spec(fit.model, fit.solver, fit.output, fit.names, fit.error)
    N, k = fd.n, len(fit.names)
    k_eta, k_eps = jax.random.split(key)
    L = np.linalg.cholesky(np.asarray(pop.omega) + 1e-12 * np.eye(k))
    etas = jax.random.normal(k_eta, (n_rep * N, k)) @ jnp.asarray(L).T
    tile = lambda a: jnp.concatenate([jnp.asarray(a)] * n_rep, axis=0)  # noqa: E731
    tv = {kk: tile(v) for kk, v in fit.typical.items()}
    ev = jax.tree.map(tile, fd.ev)
    from ._map import individual_params

    f, _ = predict(spec, individual_params(spec, tv, etas), ev, tile(fd.t_eval))
    if residual:
        f = fit.error.sample(k_eps, f)
    return np.asarray(f).reshape(n_rep, N, -1)
