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

from ._map import FitResult, f_and_jac, make_spec, obs_moments, obs_transform, predict

__all__ = ["cwres", "simulate_replicates"]


def cwres(fit: FitResult) -> np.ndarray:
    """FOCE conditional weighted residuals of every observation.

    For subject ``i`` at its mode ``eta*``, the observations (on the error model's
    scale) are linearised as ``E = m(eta*) - J eta*`` and
    ``Cov = J Omega J' + diag(s(eta*)^2)``; ``CWRES = Cov^{-1/2} (y - E)`` with the
    Cholesky factor. With inter-occasion variability ``eta*`` includes the subject's
    kappas and ``Omega`` their variances (see :func:`_random_effects`).

    Arguments:
        fit: a :class:`FitResult` (typically the post-hoc fit of a population fit).

    Returns:
        ``(N, T)`` CWRES, NaN where there is no observation or the subject failed;
        NaN on censored records too (they have no residual), which are also left out
        of the other records' covariance.
    """
    spec, errors = _spec(fit)
    fd = fit.data
    obs = fd.obs()
    tv, eta_np, omega = _random_effects(fit, spec)
    eta = jnp.asarray(eta_np)
    f, J, _ = f_and_jac(spec, tv, eta, fd.ev, jnp.asarray(fd.t_eval), obs.out)
    sigma = jnp.concatenate([e.sigma() for e in errors])
    m, s, dm, _ = obs_moments(spec, f, sigma, obs.out, slopes=True)
    Jm = np.asarray(dm[..., None] * J)
    m, s = np.asarray(m), np.asarray(s)
    yt = np.asarray(obs_transform(spec, obs.dv, obs.out))
    out = np.full(fd.dv.shape, np.nan)
    e = np.asarray(eta)
    used = fd.mask & ~fd.censored
    for i in range(fd.n):
        sel = used[i]
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
    subject's covariates, regimen and sampling times), with inter-occasion variability
    new kappas from ``N(0, omega_iov^2)`` on each of its occasions, and, with
    ``residual``, new residual errors.

    Arguments:
        fit: a :class:`FitResult` whose ``population`` and ``error`` are the model to
            simulate (e.g. ``PopulationFitResult.individual``).
        n_rep: number of replicate datasets.
        key: a JAX PRNG key.
        residual: add residual error.

    Returns:
        ``(n_rep, N, T)`` simulated observations (natural scale), each record of its
        own output (several outputs) and uncensored.
    """
    fd = fit.data
    spec, errors = _spec(fit)
    tv0, _, omega = _random_effects(fit, spec)
    N, k = fd.n, omega.shape[0]
    k_eta, k_eps = jax.random.split(key)
    L = np.linalg.cholesky(omega + 1e-12 * np.eye(k))
    etas = jax.random.normal(k_eta, (n_rep * N, k)) @ jnp.asarray(L).T
    tile = lambda a: jnp.concatenate([jnp.asarray(a)] * n_rep, axis=0)  # noqa: E731
    tv = {kk: jax.tree.map(tile, v) for kk, v in tv0.items()}
    ev = jax.tree.map(tile, fd.ev)
    from ._map import individual_params

    out = tile(fd.obs().out)
    f, _ = predict(spec, individual_params(spec, tv, etas), ev, tile(fd.t_eval), out)
    if residual:  # each record with its own output's error model
        keys = jax.random.split(k_eps, len(errors))
        draws = [e.sample(kk, f) for e, kk in zip(errors, keys)]
        f = draws[0]
        for j in range(1, len(draws)):
            f = jnp.where(out == j, draws[j], f)
    return np.asarray(f).reshape(n_rep, N, -1)


def _spec(fit: FitResult):
    """The fit's problem description and its error models, in output order (with the
    fit's inter-occasion variability, if any: see :func:`_random_effects`)."""
    outputs = fit.outputs or (fit.output,)
    errors = tuple(fit.errors[o] for o in outputs) if fit.errors else (fit.error,)
    iov = tuple(fit.iov) if fit.iov else ()
    n_occ = int(fit.kappas.shape[2]) if iov and fit.kappas is not None else 0
    spec = make_spec(fit.model, fit.solver, fit.names, errors, outputs, fit.censoring, iov, n_occ)
    return spec, errors


def _random_effects(fit: FitResult, spec):
    """The fit's typical values, its modes and the prior covariance of all of a
    subject's random effects: ``(tv, eta (N, R), Omega (R, R))``.

    Without IOV these are the typical values, the etas and Omega. With IOV
    (``fit.iov``) the random effects are ``[eta | kappa]`` as in the fit
    (``spec.n_random`` of them; kappa of IOV parameter ``a`` on occasion ``o`` at
    ``len(names) + a K + o``), the IOV parameters' typical values are piecewise on the
    occasions, and ``Omega`` is block-diagonal: Omega, then ``omega_iov^2`` of each
    IOV parameter once per occasion (kappas independent across occasions, as NONMEM's
    ``$OMEGA BLOCK(1) SAME``). Padding occasions have no data: their kappas are 0 and
    their columns of the Jacobian are 0, so they change nothing.
    """
    tv = {k: jax.tree.map(jnp.asarray, v) for k, v in fit.typical.items()}
    eta = np.nan_to_num(np.asarray(fit.etas, float))
    omega = np.asarray(fit.population.omega, float)
    if not spec.iov:
        return tv, eta, omega
    from ._iov import with_occasions

    K = spec.n_occ
    tv = with_occasions(tv, spec.iov, fit.data.occasions.times)
    kap = np.nan_to_num(np.asarray(fit.kappas, float)).reshape(eta.shape[0], -1)
    var = np.repeat([float(fit.iov[q]) for q in spec.iov], K)
    k = omega.shape[0]
    big = np.zeros((k + var.size, k + var.size))
    big[:k, :k] = omega
    big[k:, k:] = np.diag(var)
    return tv, np.concatenate([eta, kap], axis=1), big
