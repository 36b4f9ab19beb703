"""SAEM's objective (part of :mod:`._saem`): the population ``-2 log L`` by importance
sampling of each subject's marginal likelihood (a multivariate t around the conditional
mode), with its Monte-Carlo standard error. With inter-occasion variability the
integral is over the etas and the kappas of the subject's real occasions jointly
(:func:`~twinjax.calibrate._saem_iov.joint_laplace`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..ode import Model
from ..population import Population
from ..solve._base import AbstractSolver
from ._iov import check_iov
from ._map import FitResult, fit_individual
from ._residual import ErrorModel
from ._saem_iov import is_proposal, kappa_prior
from ._saem_problem import LOG_2PI, prepare, simulate_z, tile_rows

_IS_BATCH = 4096  # subject-draws per batched simulation of the importance sampling


@eqx.filter_jit
def is_logw(
    P, data, mu, oinv, ld_omega, sigma, center, chol_q, key, m: int, df: float, w=None, dmask=None
):
    """``(m, N)`` log importance weights of ``m`` t draws per subject.

    With IOV (``P.iov``) the draws are ``[eta | kappa]`` (``d = k + m_iov K``
    columns), ``w`` the IOV variances and ``dmask`` ``(N, d)`` the dimensions
    integrated (the kappas of padding occasions are held at 0 and left out)."""
    tv, off, ev, ts, obs, mask = data
    N, d = center.shape
    k = oinv.shape[0]
    dt = center.dtype
    ka, kb = jax.random.split(key)
    e = jax.random.normal(ka, (m, N, d), dt)
    if P.iov:
        e = jnp.where(dmask[None], e, 0.0)
    chi2 = 2.0 * jax.random.gamma(kb, df / 2.0, (m, N), dt)
    sc = jnp.sqrt(df / chi2)
    u = center[None] + jnp.einsum("nkl,mnl->mnk", chol_q, e) * sc[..., None]
    eta = u[..., :k]
    z = mu[None] + eta.reshape(m * N, k)
    rep = tile_rows((tv, off, ev, ts, obs, mask), m)
    tv_r, off_r, ev_r, ts_r, obs_r, mask_r = rep
    kap = None
    if P.iov:
        kap = u[..., k:].reshape(m * N, len(P.iov), P.n_occ)
    L, _ = simulate_z(P, z, tv_r, off_r, ev_r, ts_r, obs_r, mask_r, sigma, kap)
    L = L.reshape(m, N)
    O = L + jnp.einsum("mnk,kl,mnl->mn", eta, oinv, eta)
    d2 = jnp.sum(e**2, axis=-1) * sc**2
    _, ld_q = jnp.linalg.slogdet(chol_q)
    dim = k
    if P.iov:  # the real occasions' kappas: their prior, and the proposal's dimension
        occm = jnp.tile(dmask[:, k : k + P.n_occ], (m, 1))  # rows: draw by draw
        O = O + kappa_prior(kap, w, occm).reshape(m, N)
        dim = jnp.sum(dmask, axis=-1)[None]
        O = O + (dim - k) * LOG_2PI
    log_q = (
        jax.scipy.special.gammaln((df + dim) / 2.0)
        - jax.scipy.special.gammaln(df / 2.0)
        - 0.5 * dim * jnp.log(df * jnp.pi)
        - ld_q[None]
        - 0.5 * (df + dim) * jnp.log1p(d2 / df)
    )
    return -0.5 * O - 0.5 * ld_omega - 0.5 * k * LOG_2PI - log_q


@dataclasses.dataclass(eq=False)
class ImportanceSamplingOFV:
    """An importance-sampling estimate of the population objective.

    Attributes:
        ofv: ``-2 log L`` without ``n_obs log 2 pi`` (NONMEM's / twinjax FOCE-I's
            convention; censored records contribute ``-2 log P``).
        se: its Monte-Carlo standard error.
        minus2ll: ``ofv + n_obs log 2 pi``.
        ofv_i, se_i: per subject.
        n_samples: draws per subject; df: the t proposal's degrees of freedom.
        ess: ``(N,)`` effective sample size of the weights per subject.
        n_obs: uncensored observations; wall_s: time.
    """

    ofv: float
    se: float
    minus2ll: float
    ofv_i: np.ndarray
    se_i: np.ndarray
    n_samples: int
    df: float
    ess: np.ndarray
    n_obs: int
    wall_s: float

    def __repr__(self) -> str:
        return f"ImportanceSamplingOFV(ofv={self.ofv:.3f} +- {self.se:.3f}, M={self.n_samples})"


def is_ofv(P, data, mu, omega, sigma, etas, cov, n_samples, df, key, n_obs, iov=None):
    """The importance-sampling OFV at ``(mu, omega, sigma)``, the proposals centred at
    ``etas`` with covariances ``cov``; with IOV, ``iov = (omega_iov^2 (m,), dmask (N,
    d))`` and ``etas``, ``cov`` the joint ``[eta | kappa]`` proposal of
    :func:`~twinjax.calibrate._saem_iov.joint_laplace`."""
    t0 = time.perf_counter()
    N, d = etas.shape
    mu = jnp.asarray(mu)
    omega = jnp.asarray(omega)
    oinv = jnp.linalg.inv(omega)
    _, ld = jnp.linalg.slogdet(omega)
    w_iov = dmask = None
    if iov is None:
        bad = ~np.all(np.isfinite(etas), axis=1) | ~np.all(np.isfinite(cov), axis=(1, 2))
        center = np.where(bad[:, None], 0.0, etas)
        covq = np.where(bad[:, None, None], np.asarray(omega)[None], cov)
    else:  # joint_laplace gave failed subjects the prior already
        center, covq = etas, cov
        w_iov, dmask = jnp.asarray(iov[0]), jnp.asarray(iov[1])
    chol_q = jnp.asarray(np.linalg.cholesky(covq + 1e-12 * np.eye(d)[None]))
    m = max(1, min(n_samples, _IS_BATCH // max(N, 1)))
    n_calls = -(-n_samples // m)
    parts = []
    for c in range(n_calls):
        lw = is_logw(
            P.st,
            data,
            mu,
            oinv,
            ld,
            jnp.asarray(sigma),
            jnp.asarray(center),
            chol_q,
            jax.random.fold_in(key, c),
            m,
            float(df),
            w_iov,
            dmask,
        )
        parts.append(np.asarray(lw))
    lw = np.concatenate(parts, axis=0)[:n_samples]  # (M, N)
    mx = np.max(lw, axis=0)
    w = np.exp(lw - mx[None])
    mean_w = np.mean(w, axis=0)
    ofv_i = -2.0 * (np.log(mean_w) + mx)
    M = lw.shape[0]
    sd_w = np.std(w, axis=0, ddof=1)
    se_i = 2.0 * sd_w / (np.sqrt(M) * mean_w)
    ess = np.sum(w, axis=0) ** 2 / np.sum(w**2, axis=0)
    ofv = float(np.sum(ofv_i))
    return ImportanceSamplingOFV(
        ofv=ofv,
        se=float(np.sqrt(np.sum(se_i**2))),
        minus2ll=ofv + n_obs * LOG_2PI,
        ofv_i=ofv_i,
        se_i=se_i,
        n_samples=M,
        df=float(df),
        ess=ess,
        n_obs=n_obs,
        wall_s=time.perf_counter() - t0,
    )


def importance_sampling_ofv(
    model: Model,
    data,
    population: Population | dict,
    error: ErrorModel | Mapping[str, ErrorModel],
    *,
    n_samples: int = 5000,
    df: float = 5.0,
    seed: int = 0,
    output: str | None = None,
    solver: AbstractSolver | None = None,
    censoring: str | None = None,
    lloq: float | None = None,
    dvid=None,
    output_column: str = "DVID",
    individual: FitResult | None = None,
    iov: Mapping[str, float] | None = None,
    occasion_column: str = "OCC",
) -> ImportanceSamplingOFV:
    """The population objective ``-2 log L`` at given parameters by importance sampling.

    For each subject the marginal likelihood ``p(y_i) = int p(y_i | eta) p(eta) d eta``
    is estimated with ``n_samples`` draws of a multivariate t (``df`` degrees of
    freedom) centred at the conditional mode with the Laplace covariance (the MAP fit
    of :func:`fit_individual` at these parameters, or ``individual``); the draws of all
    subjects are simulated in batches. Use it at FOCE-I estimates (``fit.population``,
    ``fit.errors``) to compare with the FOCE-I OFV, whose convention it follows
    (``n_obs log 2 pi`` excluded; censored records contribute ``-2 log P``).

    Arguments:
        model, data, population, error: as for :func:`fit_population`; the population
            and the error models' SDs are the parameters evaluated.
        n_samples: draws per subject; df: the t proposal's degrees of freedom.
        seed: random seed (fixed seed: the same estimate).
        individual: a :class:`FitResult` at these parameters to take the modes from
            (with ``iov``: a fit with the same ``iov``, which has the kappas).
        iov, occasion_column: inter-occasion variability ``{parameter: omega_iov^2}``
            (the variances evaluated) and the occasion column, as for
            :func:`fit_population`: the marginal likelihood integrates over the etas
            and the kappas of every real occasion jointly, the proposal centred at
            their joint MAP with the joint Laplace covariance; comparable with the
            FOCE-I OFV of a fit with ``iov``.

    Returns:
        An :class:`ImportanceSamplingOFV` (OFV with its Monte-Carlo SE).

    Raises:
        ValueError: ``n_samples < 2`` or ``df <= 0``; invalid data or names; the IOV
            checks of :func:`fit_population`; an ``individual`` without the kappas of
            ``iov``.
    """
    if int(n_samples) < 2:
        raise ValueError(f"n_samples must be at least 2, got {n_samples}")
    if not (float(df) > 0):
        raise ValueError(f"df must be > 0, got {df}")
    w = check_iov(model, iov)
    pop, outputs, errors, solver, fd, cmode, spec, P = prepare(
        model,
        data,
        population,
        error,
        output,
        solver,
        censoring,
        lloq,
        dvid,
        output_column,
        tuple(w),
        occasion_column,
    )
    if not pop.iiv:
        raise ValueError("importance_sampling_ofv needs a population with IIV (an omega)")
    ind = individual
    if ind is not None and w and getattr(ind, "kappas", None) is None:
        raise ValueError(
            f"importance_sampling_ofv: iov={dict(w)} but individual has no kappas: give a "
            "fit_individual(..., iov=...) result, or leave individual out"
        )
    if ind is None:
        ind = fit_individual(
            model,
            fd,
            pop,
            error,
            output=output,
            solver=solver,
            censoring=censoring,
            iov=w or None,
            occasion_column=occasion_column,
        )
    sigma = np.concatenate([np.asarray(e.sigma()) for e in errors])
    mu = np.asarray(model.pack({k: jnp.asarray(pop.typical[k]) for k in pop.iiv}, pop.iiv))
    data_t = (P.tv, P.off, P.ev, P.ts, P.obs, P.mask)
    n_obs = int(np.sum(fd.mask)) - int(np.sum(fd.censored))
    center, cov, iv = is_proposal(model, pop, fd, spec, sigma, w, ind)
    return is_ofv(
        P,
        data_t,
        mu,
        pop.omega,
        sigma,
        center,
        cov,
        int(n_samples),
        df,
        jax.random.PRNGKey(seed),
        n_obs,
        iv,
    )
