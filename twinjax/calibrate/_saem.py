"""Population fits by SAEM (stochastic approximation EM), batched over subjects, with an
importance-sampling objective comparable to FOCE-I's.

Model (mu-referenced): for subject ``i`` the unconstrained coordinates of the
parameters with IIV are ``phi_i = g(TV_i) + eta_i = mu + c_i + eta_i`` with
``eta_i ~ N(0, Omega)``, ``g`` the parameter's transform (log for the usual log-normal
parameters), ``mu = g(TV)`` the estimated typical values and ``c_i`` the fixed
covariate offsets (``log`` of the covariate factors). The latent variable of the EM is
``z_i = mu + eta_i`` (``phi_i`` without the covariate offset), so the complete-data
likelihood ``p(y, z)`` belongs to the exponential family with sufficient statistics
``S1 = sum_i z_i``, ``S2 = sum_i z_i z_i'`` for ``(mu, Omega)``, and the residual SDs
have a closed-form (additive / proportional / log error) or low-dimensional (combined
error, censored records) M-step.

Estimated covariate coefficients (``estimate=True`` on a :class:`Power`,
:class:`Exponential` or :class:`Categorical` effect on a log-normal parameter with
IIV) are mu-referenced as in Monolix and saemix: ``log TV_i = mu + C_i beta`` with
``C_i`` the subject's covariate design (``log(x / ref)``, ``x - ref``, category
indicators; ``beta`` a power's or exponential's theta, a categorical's log factor). The
latent variable is then ``z_i = mu + C_i beta + eta_i``, the sufficient statistics are
per subject (``s1_i ~ E[z_i]``) plus ``S2``, and the M-step for ``(mu, beta)`` is the
generalised least-squares regression of ``s1_i`` on ``X_i = [I, C_i]`` with weight
``Omega^-1`` (the previous iteration's; with a diagonal Omega one ordinary least
squares per parameter), then ``Omega = S2/N - mean_i (s1_i m_i' + m_i s1_i' - m_i
m_i')``, ``m_i = X_i (mu, beta)``. A coefficient beyond its bounds is clipped onto
them (the others re-solved). Linear effects (``log(1 + theta (x - ref))``, not linear in
theta) and estimated effects of time-varying covariates are refused.

Each iteration ``k`` (Kuhn & Lavielle 2005; settings of nlmixr2's ``saemControl()``,
itself following saemix and Monolix):

1. **Simulation (E) step**: Metropolis-Hastings kernels for every subject and chain at
   once (``n_chains`` chains per subject, 3 by default; each kernel evaluation is ONE
   batched simulation of the whole dataset times the chains):

   - kernel 1 (``kernels[0]`` = 2 times): independent proposal from the population
     distribution ``N(mu, Omega)``; accepted with ``exp(-(L' - L)/2)``, ``L`` the
     data's ``-2 log p(y | z)``;
   - kernel 2 (``kernels[1]`` = 2 times): random walk on all components,
     ``z' = z + d2 * e``; accepted on the posterior ``L + (z - mu)' Omega^-1 (z - mu)``;
   - kernel 3 (``kernels[2]`` = 2 times): random walk on one component at a time.

   The random-walk scales start at ``0.5 sqrt(Omega_jj)`` (saemix ``rw.init``,
   nlmixr2 ``rmcmc``) and adapt by ``d *= 1 + 0.4 (acceptance - target)`` (clamped
   to ``[0.5, 2]`` per iteration), targets 0.234 (all components) and 0.44 (one
   component) (nlmixr2 ``iaccept`` / ``iacceptSingle``; Roberts & Rosenthal 2009).
2. **Stochastic approximation**: ``s <- s + gamma_k (S(z) - s)`` with ``gamma_k = 1``
   during the ``n_burn`` exploratory iterations and ``1 / (k - n_burn + 1)`` after
   (nlmixr2 ``nBurn = 200``, ``nEm = 300``).
3. **Maximisation**: ``mu = s1`` (estimated components), ``Omega = s2 - s1 mu' - mu s1'
   + mu mu'`` (diagonal part for ``omega="diagonal"``); residual variances: the
   current sample's optimum, stochastically averaged. During the first
   ``0.75 n_burn`` iterations simulated annealing keeps every variance at least
   ``0.95`` times its previous value (nlmixr2 ``coefSa``, ``perSa``).

Standard errors: the observed Fisher information by Louis' missing-information
principle, ``I = sum_i (-E[d2 log p(y_i, z_i)] - Cov[d log p(y_i, z_i)])`` (posterior
expectations over ``n_fim`` further MCMC iterations at the estimates; the derivatives
of the complete-data log-likelihood in ``(mu, beta, chol Omega, log sigma)`` are exact by
AD).

Objective: **importance sampling** of each subject's marginal likelihood
``p(y_i) = E_q[p(y_i | eta) p(eta) / q(eta)]`` with ``q`` a multivariate t (5 degrees
of freedom) centred at the conditional mode with the Laplace covariance (the post-hoc
MAP fit), ``n_is`` draws per subject, all subjects and draws in batched simulations.
The OFV follows twinjax's FOCE-I convention (NONMEM's: ``-2 log L`` without
``n_obs log 2 pi``; censored records contribute ``-2 log P``), so that the two are
comparable, and carries its Monte-Carlo standard error (delta method per subject).

References:
    - Kuhn E, Lavielle M. Maximum likelihood estimation in nonlinear mixed effects
      models. Comput Stat Data Anal 49:1020-1038, 2005.
    - Delyon B, Lavielle M, Moulines E. Convergence of a stochastic approximation
      version of the EM algorithm. Ann Stat 27:94-128, 1999.
    - Louis TA. Finding the observed information matrix when using the EM algorithm.
      J R Stat Soc B 44:226-233, 1982.
    - nlmixr2est ``saemControl()`` defaults (seed 99, nBurn 200, nEm 300, nmc 3,
      nu c(2, 2, 2), rmcmc 0.5, stepsizeRw 0.4, coefSa 0.95, perSa 0.75).
    - Monolix documentation, "Log-likelihood estimation by importance sampling" (a t
      proposal around the conditional distribution's mean and variance).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..model import Model, Piecewise
from ..population import Categorical, Exponential, Population, Power
from ..solve._base import AbstractSolver
from ..solve._ensemble import Ensemble
from ._map import (
    FitResult,
    Obs,
    Spec,
    as_population,
    baseline,
    extra_nll,
    fit_censoring,
    fit_individual,
    make_spec,
    obs_moments,
    obs_transform,
    predict,
    prepare_data,
    resolve_outputs,
    typical_values,
)
from ._nlme import PopulationFitResult, covariate_model
from ._residual import ErrorModel

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ImportanceSamplingOFV", "SAEMResult", "importance_sampling_ofv", "saem"]

LOG_2PI = float(np.log(2 * np.pi))
_CHUNK = 20  # SAEM iterations per compiled call (progress is printed between calls)
_IS_BATCH = 4096  # subject-draws per batched simulation of the importance sampling


# ============================================================================ problem
class _Static(eqx.Module):
    """What the compiled functions need besides arrays: the spec and the IIV names."""

    spec: Spec
    iiv: tuple = eqx.field(static=True)
    n: int = eqx.field(static=True)


@dataclasses.dataclass(frozen=True, eq=False)
class _Problem:
    """Data and fixed quantities of a fit (host side)."""

    st: _Static
    # {name: (N,)} covariate-adjusted typical values (non-IIV params used); an IIV param
    # with a time-varying covariate: its Piecewise course relative to its time-0 value
    tv: dict
    off: jax.Array  # (N, k) covariate offsets of the IIV params (unconstrained)
    ev: object
    ts: jax.Array
    obs: Obs
    mask: jax.Array
    n: int


def _problem(model, pop, fd, spec) -> _Problem:
    iiv = tuple(pop.iiv)
    N = fd.n
    tvN = {
        k: jax.tree.map(jnp.asarray, v)
        for k, v in typical_values(pop, fd.covariates, N, fd.varying).items()
    }
    tv0 = baseline(tvN)
    if iiv:
        z_i = np.asarray(model.pack(tv0, iiv))
        z_0 = np.asarray(model.pack({k: jnp.asarray(pop.typical[k]) for k in iiv}, iiv))
        off = z_i - z_0[None]
    else:
        off = np.zeros((N, 0))
    for j, q in enumerate(iiv):
        if model.param(q).transform != "log" and np.max(np.abs(off[:, j])) > 1e-12:
            raise ValueError(
                f"saem: the covariate effect on {q!r} (transform "
                f"{model.param(q).transform!r}) is not mu-referenced: SAEM supports "
                "covariate factors on log-transformed parameters only"
            )
        if isinstance(tvN[q], Piecewise):  # time-varying: its course relative to time 0
            if model.param(q).transform != "log":
                raise ValueError(
                    f"saem: {q!r} changes with a time-varying covariate but its transform "
                    f"is {model.param(q).transform!r}; SAEM supports covariate factors on "
                    "log-transformed parameters only"
                )
            tvN[q] = tvN[q] / tv0[q]
    return _Problem(
        st=_Static(spec, iiv, N),
        tv=tvN,
        off=jnp.asarray(off),
        ev=fd.ev,
        ts=jnp.asarray(fd.t_eval),
        obs=fd.obs(),
        mask=jnp.asarray(fd.mask),
        n=N,
    )


def _tile(tree, r: int):
    """Every leaf's leading axis repeated ``r`` times (copies one after the other)."""
    if r == 1:
        return tree

    def rep(a):
        a = jnp.asarray(a)
        return jnp.broadcast_to(a[None], (r,) + a.shape).reshape((r * a.shape[0],) + a.shape[1:])

    return jax.tree.map(rep, tree)


# ============================================================================ likelihood
def _data_nll(spec, f, sigma, obs: Obs, mask):
    """Per subject ``-2 log p(y | f)`` without the ``log 2 pi`` constants (B,).

    Observed records: ``((y - m)/s)^2 + log s^2``; censored records (and M4's
    conditioning): ``-2 log P`` as in the FOCE-I/MAP objective (``extra_nll``).
    """
    m, s = obs_moments(spec, f, sigma, obs.out)
    yt = obs_transform(spec, obs.dv, obs.out)
    censored = spec.censoring != "none"
    g = (mask & (obs.cens == 0)) if censored else mask
    r = jnp.where(g, (yt - m) / s, 0.0)
    terms = r**2 + jnp.where(g, 2.0 * jnp.log(s), 0.0)
    if censored:
        terms = terms + jnp.where(mask, extra_nll(spec, f, sigma, obs), 0.0)
    return jnp.sum(terms, axis=-1)


def _simulate(P: _Static, z, tv, off, ev, ts, obs, mask, sigma):
    """``(L, f)``: ``-2 log p(y | z)`` (inf where the simulation fails) and predictions."""
    spec = P.spec
    p = dict(tv)
    if P.iiv:
        p.update(spec.model.unpack(z + off, P.iiv))
        for q in P.iiv:  # a time-varying covariate factor relative to time 0
            if isinstance(tv[q], Piecewise):
                p[q] = tv[q] * p[q]
    f, st = predict(spec, p, ev, ts, obs.out)
    L = _data_nll(spec, f, sigma, obs, mask)
    ok = (st == 0) & jnp.isfinite(L)
    return jnp.where(ok, L, jnp.inf), f


def _quad(z, mu, oinv):
    """``(z - mu)' Omega^-1 (z - mu)`` per row; ``mu`` ``(k,)`` or per row ``(B, k)``."""
    d = z - jnp.broadcast_to(mu, z.shape)
    return jnp.einsum("bk,kl,bl->b", d, oinv, d)


# ============================================================================ M-step
def _sigma_opt(spec, f, sigma, obs, mask, closed_form: bool):
    """Residual SDs minimising the current sample's ``sum_b L_b`` (predictions fixed)."""
    if closed_form:
        # one SD per error model, s = sigma * s(1): sigma^2 = mean ((y - m)/s(1))^2
        ones = jnp.ones_like(sigma)
        m, s1 = obs_moments(spec, f, ones, obs.out)
        yt = obs_transform(spec, obs.dv, obs.out)
        r2 = jnp.where(mask, ((yt - m) / s1) ** 2, 0.0)
        out = []
        for j in range(len(spec.all_errors())):
            w = mask & (obs.out == j)
            out.append(jnp.sum(jnp.where(w, r2, 0.0)) / jnp.maximum(jnp.sum(w), 1))
        return jnp.sqrt(jnp.stack(out))

    def Q(u):
        return jnp.sum(_data_nll(spec, f, jnp.exp(u), obs, mask))

    g_fn, h_fn = jax.grad(Q), jax.hessian(Q)
    n = sigma.shape[0]
    ts_ = jnp.asarray([1.0, 0.5, 0.25, 0.125, 0.0625, 0.0], sigma.dtype)

    def newton(u, _):
        g, H = g_fn(u), h_fn(u)
        lam = jnp.maximum(0.0, -jnp.min(jnp.linalg.eigvalsh(H))) + 1e-8
        step = -jnp.linalg.solve(H + lam * jnp.eye(n, dtype=u.dtype), g)
        step = jnp.clip(step, -1.0, 1.0)
        vals = jax.vmap(lambda t: Q(u + t * step))(ts_)
        vals = jnp.where(jnp.isfinite(vals), vals, jnp.inf)
        return u + ts_[jnp.argmin(vals)] * step, None

    u, _ = jax.lax.scan(newton, jnp.log(sigma), None, length=12)
    return jnp.exp(u)


# ============================================================================ SAEM
class _Carry(eqx.Module):
    z: jax.Array  # (B, k) latent (mu + eta) per chain
    L: jax.Array  # (B,) -2 log p(y | z)
    f: jax.Array  # (B, T) predictions at z
    mu: jax.Array  # (k,)
    omega: jax.Array  # (k, k)
    sigma: jax.Array  # (n_sigma,)
    s1: jax.Array  # (k,); with estimated covariate coefficients (N, k), per subject
    s2: jax.Array
    s3: jax.Array  # SA of the residual variances
    d2: jax.Array  # (k,) random-walk scales, all components
    d3: jax.Array  # (k,) random-walk scales, one component
    beta: jax.Array  # (n_beta,) estimated covariate coefficients (log-factor scale)


class _Design(eqx.Module):
    """Estimated covariate coefficients of a mu-referenced model: subject ``i``'s
    prior mean is ``mu + C_i beta`` with ``C`` ``(N, k, n_beta)`` (``C[i, j, l]`` the
    covariate column of coefficient ``l`` on IIV parameter ``j``: ``log(x / ref)``
    for a power, ``x - ref`` for an exponential, an indicator for a category) and
    ``beta`` the coefficients on the log-factor scale (a power's / exponential's
    theta; the log of a categorical factor), kept inside ``[lo, hi]``."""

    C: jax.Array  # (N, k, n_beta)
    lo: jax.Array  # (n_beta,)
    hi: jax.Array  # (n_beta,)


def _prior_mean(mu, beta, D: _Design, R: int):
    """The prior mean of every chain's latent: ``mu`` ``(k,)`` without estimated
    coefficients, else ``mu + C_i beta`` ``(R N, k)`` (chains one copy after another)."""
    if D.C.shape[-1] == 0:
        return mu
    m = mu[None] + jnp.einsum("nkl,l->nk", D.C, beta)
    return jnp.tile(m, (R, 1))


def _pinned_solve(A, b, pin, val):
    """Solve ``A x = b`` with the components where ``pin`` is set held at ``val``."""
    n = A.shape[0]
    eye = jnp.eye(n, dtype=A.dtype)
    A2 = jnp.where(pin[:, None], eye, A)
    b2 = jnp.where(pin, val, b)
    return jnp.linalg.solve(A2, b2)


def _gls(s1, omega, est, mu_fixed, beta_prev, D: _Design):
    """M-step of ``(mu, beta)``: the generalised least-squares regression of the
    subjects' stochastic approximations ``s1_i ~ E[z_i]`` on their designs
    ``X_i = [I_k, C_i]``, weight ``Omega^-1`` (the previous iteration's: for a diagonal
    Omega the regression splits into one ordinary least squares per parameter, and
    Omega drops out). Typical values not estimated stay at ``mu_fixed``; a coefficient
    outside its bounds is clipped onto them and the other components re-solved given
    it (exact for one active bound; with several, each is clipped once more)."""
    N, k, nb = D.C.shape
    dt = s1.dtype
    X = jnp.concatenate([jnp.broadcast_to(jnp.eye(k, dtype=dt)[None], (N, k, k)), D.C], -1)
    oinv = jnp.linalg.inv(omega)
    A = jnp.einsum("nkp,kl,nlq->pq", X, oinv, X)
    b = jnp.einsum("nkp,kl,nl->p", X, oinv, s1)
    fixed = jnp.concatenate([~est, jnp.zeros((nb,), bool)])
    val = jnp.concatenate([mu_fixed, beta_prev])
    th = _pinned_solve(A, b, fixed, val)
    beta = jnp.clip(th[k:], D.lo, D.hi)
    # the clipped coefficients held on their bounds, the other components re-solved
    # (the bound-constrained least squares when one bound is active), clipped again
    clipped = beta != th[k:]
    th = _pinned_solve(A, b, jnp.concatenate([~est, clipped]), jnp.concatenate([mu_fixed, beta]))
    beta = jnp.clip(th[k:], D.lo, D.hi)
    return th[:k], beta


class _Settings(eqx.Module):
    n_burn: int = eqx.field(static=True)
    n_total: int = eqx.field(static=True)
    n_sa: int = eqx.field(static=True)
    coef_sa: float = eqx.field(static=True)
    kernels: tuple = eqx.field(static=True)
    diagonal: bool = eqx.field(static=True)
    closed_form: bool = eqx.field(static=True)
    n_rep: int = eqx.field(static=True)
    rate: float = eqx.field(static=True)


def _gamma(it, n_burn):
    return jnp.where(it < n_burn, 1.0, 1.0 / (it - n_burn + 1.0))


def _mcmc(P, S, c: _Carry, key, data, mu, omega, sigma, adapt: bool):
    """The three MH kernels on every subject and chain; returns the new carry and the
    kernels' acceptance rates."""
    tv, off, ev, ts, obs, mask = data
    B, k = c.z.shape
    dt = c.z.dtype
    oinv = jnp.linalg.inv(omega)
    chol = jnp.linalg.cholesky(omega + 1e-14 * jnp.eye(k, dtype=dt))
    k1, k2, k3 = jax.random.split(key, 3)

    def sim(z):
        return _simulate(P, z, tv, off, ev, ts, obs, mask, sigma)

    # kernel 1: proposals from the population distribution (prior); ratio of likelihoods
    def ker1(i, st):
        z, L, f, acc = st
        kk = jax.random.fold_in(k1, i)
        ka, kb = jax.random.split(kk)
        zp = jnp.broadcast_to(mu, (B, k)) + jax.random.normal(ka, (B, k), dt) @ chol.T
        Lp, fp = sim(zp)
        a = jnp.log(jax.random.uniform(kb, (B,), dt)) < -0.5 * (Lp - L)
        return (
            jnp.where(a[:, None], zp, z),
            jnp.where(a, Lp, L),
            jnp.where(a[:, None], fp, f),
            acc + jnp.mean(a.astype(dt)),
        )

    z, L, f, _ = jax.lax.fori_loop(0, S.kernels[0], ker1, (c.z, c.L, c.f, jnp.zeros((), dt)))

    # kernel 2: random walk on all components; ratio of posteriors
    def ker2(i, st):
        z, L, f, acc = st
        kk = jax.random.fold_in(k2, i)
        ka, kb = jax.random.split(kk)
        zp = z + jax.random.normal(ka, (B, k), dt) * c.d2[None]
        Lp, fp = sim(zp)
        U, Up = L + _quad(z, mu, oinv), Lp + _quad(zp, mu, oinv)
        a = jnp.log(jax.random.uniform(kb, (B,), dt)) < -0.5 * (Up - U)
        return (
            jnp.where(a[:, None], zp, z),
            jnp.where(a, Lp, L),
            jnp.where(a[:, None], fp, f),
            acc + jnp.mean(a.astype(dt)),
        )

    z, L, f, acc2 = jax.lax.fori_loop(0, S.kernels[1], ker2, (z, L, f, jnp.zeros((), dt)))
    acc2 = acc2 / max(S.kernels[1], 1)

    # kernel 3: random walk on one component at a time
    eye = jnp.eye(k, dtype=dt)

    def ker3(i, st):
        z, L, f, acc = st
        j = i % k
        kk = jax.random.fold_in(k3, i)
        ka, kb = jax.random.split(kk)
        e = eye[j]
        zp = z + (jax.random.normal(ka, (B,), dt) * jnp.dot(c.d3, e))[:, None] * e[None]
        Lp, fp = sim(zp)
        U, Up = L + _quad(z, mu, oinv), Lp + _quad(zp, mu, oinv)
        a = jnp.log(jax.random.uniform(kb, (B,), dt)) < -0.5 * (Up - U)
        return (
            jnp.where(a[:, None], zp, z),
            jnp.where(a, Lp, L),
            jnp.where(a[:, None], fp, f),
            acc + e * jnp.mean(a.astype(dt)),
        )

    n3 = S.kernels[2] * k
    z, L, f, acc3 = jax.lax.fori_loop(0, n3, ker3, (z, L, f, jnp.zeros((k,), dt)))
    acc3 = acc3 / max(S.kernels[2], 1)
    d2, d3 = c.d2, c.d3
    if adapt:
        if S.kernels[1]:
            d2 = d2 * jnp.clip(1.0 + S.rate * (acc2 - 0.234), 0.5, 2.0)
        if S.kernels[2]:
            d3 = d3 * jnp.clip(1.0 + S.rate * (acc3 - 0.44), 0.5, 2.0)
        scale = jnp.sqrt(jnp.diag(omega))
        d2 = jnp.clip(d2, 1e-3 * scale, 1e3 * scale)
        d3 = jnp.clip(d3, 1e-3 * scale, 1e3 * scale)
    return dataclasses.replace(c, z=z, L=L, f=f, d2=d2, d3=d3), acc2, acc3


def _step(P, S, est, mu_fixed, D: _Design, data, c: _Carry, it, key):
    """One SAEM iteration: MH kernels, stochastic approximation, M-step."""
    tv, off, ev, ts, obs, mask = data
    mean = _prior_mean(c.mu, c.beta, D, S.n_rep)
    c, acc2, acc3 = _mcmc(P, S, c, key, data, mean, c.omega, c.sigma, adapt=True)
    g = _gamma(it, S.n_burn)
    z = c.z
    B = z.shape[0]
    s2 = c.s2 + g * (z.T @ z / B - c.s2)
    beta = c.beta
    if D.C.shape[-1] == 0:
        s1 = c.s1 + g * (jnp.mean(z, axis=0) - c.s1)
        mu = jnp.where(est, s1, mu_fixed)
        om = s2 - jnp.outer(s1, mu) - jnp.outer(mu, s1) + jnp.outer(mu, mu)
    else:  # per-subject statistics s1_i and the regression on the covariate design
        N = D.C.shape[0]
        zbar = jnp.mean(z.reshape(S.n_rep, N, -1), axis=0)
        s1 = c.s1 + g * (zbar - c.s1)
        mu, beta = _gls(s1, c.omega, est, mu_fixed, c.beta, D)
        m = mu[None] + jnp.einsum("nkl,l->nk", D.C, beta)
        om = s2 - (s1.T @ m + m.T @ s1) / N + m.T @ m / N
    om = 0.5 * (om + om.T)
    if S.diagonal:
        om = jnp.diag(jnp.diag(om))
    sig_opt = _sigma_opt(P.spec, c.f, c.sigma, obs, mask, S.closed_form)
    s3 = c.s3 + g * (sig_opt**2 - c.s3)
    var = s3
    anneal = it < S.n_sa
    dg = jnp.diag(om)
    dg_new = jnp.where(anneal, jnp.maximum(dg, S.coef_sa * jnp.diag(c.omega)), dg)
    om = om + jnp.diag(dg_new - dg)
    var = jnp.where(anneal, jnp.maximum(var, S.coef_sa * c.sigma**2), var)
    active = it < S.n_total
    new = dataclasses.replace(
        c, mu=mu, omega=om, sigma=jnp.sqrt(var), s1=s1, s2=s2, s3=s3, beta=beta
    )
    out = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, c)
    # complete-data -2 log-likelihood per chain (for progress): data + eta prior
    oinv = jnp.linalg.inv(out.omega)
    _, ld = jnp.linalg.slogdet(out.omega)
    mean_out = _prior_mean(out.mu, out.beta, D, S.n_rep)
    cll = jnp.mean(out.L + _quad(out.z, mean_out, oinv) + ld) * P.n
    trace = dict(
        mu=out.mu,
        beta=out.beta,
        omega=jnp.diag(out.omega),
        sigma=out.sigma,
        acc2=acc2,
        acc3=jnp.mean(acc3),
        cll=cll,
    )
    return out, trace


@eqx.filter_jit
def _run_chunk(P, S, est, mu_fixed, D, data, c, it0, key, n: int):
    def body(c, i):
        it = it0 + i
        return _step(P, S, est, mu_fixed, D, data, c, it, jax.random.fold_in(key, it))

    return jax.lax.scan(body, c, jnp.arange(n))


# ============================================================================ FIM (Louis)
def _unpack_phi(phi, k, n_est, est_idx, mu_fixed, diagonal, nb: int = 0):
    """``phi = [mu (estimated) | beta | Omega (Cholesky, log diagonal) | log sigma]``
    -> ``(mu, Omega, sigma, beta)``."""
    mu = mu_fixed.at[est_idx].set(phi[:n_est])
    beta = phi[n_est : n_est + nb]
    rows, cols = np.tril_indices(k) if not diagonal else (np.arange(k), np.arange(k))
    no = len(rows)
    o0 = n_est + nb
    w = phi[o0 : o0 + no]
    vals = jnp.where(jnp.asarray(rows == cols), jnp.exp(w), w)
    Lc = jnp.zeros((k, k), phi.dtype).at[rows, cols].set(vals)
    return mu, Lc @ Lc.T, jnp.exp(phi[o0 + no :]), beta


def _pack_phi(mu, omega, sigma, est_idx, diagonal, beta=()):
    k = omega.shape[0]
    Lc = np.linalg.cholesky(np.asarray(omega) + 1e-14 * np.eye(k))
    rows, cols = np.tril_indices(k) if not diagonal else (np.arange(k), np.arange(k))
    w = Lc[rows, cols]
    w = np.where(rows == cols, np.log(np.maximum(w, 1e-300)), w)
    return np.concatenate(
        [np.asarray(mu)[est_idx], np.asarray(beta, float), w, np.log(np.asarray(sigma))]
    )


@eqx.filter_jit
def _louis_terms(P, S, est_idx, mu_fixed, D: _Design, data, c: _Carry, phi, key, n_iter: int):
    """Posterior means (per subject) of the complete-data score and of
    ``d2 log p + score score'`` over ``n_iter`` MCMC iterations at ``phi``."""
    tv, off, ev, ts, obs, mask = data
    k = c.z.shape[1]
    n_est = est_idx.shape[0]
    nb = D.C.shape[-1]
    mu, omega, sigma, beta = _unpack_phi(phi, k, n_est, est_idx, mu_fixed, S.diagonal, nb)
    mean = _prior_mean(mu, beta, D, S.n_rep)
    C_r = _tile(D.C, S.n_rep)  # (B, k, nb)
    spec = P.spec

    def logp(ph, z, f, o, m, Ci):  # one record set: complete-data log-likelihood
        mu_, om_, sg_, b_ = _unpack_phi(ph, k, n_est, est_idx, mu_fixed, S.diagonal, nb)
        obs1 = jax.tree.map(lambda a: a[None], o)
        L = _data_nll(spec, f[None], sg_, obs1, m[None])[0]
        d = z - (mu_ + Ci @ b_) if nb else z - mu_
        _, ld = jnp.linalg.slogdet(om_)
        return -0.5 * (L + d @ jnp.linalg.solve(om_, d) + ld)

    grad = jax.vmap(jax.grad(logp), in_axes=(None, 0, 0, 0, 0, 0))
    hess = jax.vmap(jax.hessian(logp), in_axes=(None, 0, 0, 0, 0, 0))
    c = dataclasses.replace(c, mu=mu, omega=omega, sigma=sigma, beta=beta)
    P_ = phi.shape[0]
    B = c.z.shape[0]
    zero = (jnp.zeros((B, P_), phi.dtype), jnp.zeros((B, P_, P_), phi.dtype))

    def body(st, i):
        c, (gs, hs) = st
        c, _, _ = _mcmc(P, S, c, jax.random.fold_in(key, i), data, mean, omega, sigma, False)
        g = grad(phi, c.z, c.f, obs, mask, C_r)
        h = hess(phi, c.z, c.f, obs, mask, C_r)
        return (c, (gs + g, hs + h + g[:, :, None] * g[:, None, :])), None

    (c, (gs, hs)), _ = jax.lax.scan(body, (c, zero), jnp.arange(n_iter))
    return c, gs / n_iter, hs / n_iter


# ============================================================================ IS
@eqx.filter_jit
def _simulate_jit(P: _Static, z, tv, off, ev, ts, obs, mask, sigma):
    return _simulate(P, z, tv, off, ev, ts, obs, mask, sigma)


@eqx.filter_jit
def _is_logw(P, data, mu, oinv, ld_omega, sigma, center, chol_q, key, m: int, df: float):
    """``(m, N)`` log importance weights of ``m`` t draws per subject."""
    tv, off, ev, ts, obs, mask = data
    N, k = center.shape
    dt = center.dtype
    ka, kb = jax.random.split(key)
    e = jax.random.normal(ka, (m, N, k), dt)
    chi2 = 2.0 * jax.random.gamma(kb, df / 2.0, (m, N), dt)
    sc = jnp.sqrt(df / chi2)
    eta = center[None] + jnp.einsum("nkl,mnl->mnk", chol_q, e) * sc[..., None]
    eta_f = eta.reshape(m * N, k)
    z = mu[None] + eta_f
    rep = _tile((tv, off, ev, ts, obs, mask), m)
    tv_r, off_r, ev_r, ts_r, obs_r, mask_r = rep
    L, _ = _simulate(P, z, tv_r, off_r, ev_r, ts_r, obs_r, mask_r, sigma)
    L = L.reshape(m, N)
    O = L + jnp.einsum("mnk,kl,mnl->mn", eta, oinv, eta)
    d2 = jnp.sum(e**2, axis=-1) * sc**2
    _, ld_q = jnp.linalg.slogdet(chol_q)
    log_q = (
        jax.scipy.special.gammaln((df + k) / 2.0)
        - jax.scipy.special.gammaln(df / 2.0)
        - 0.5 * k * jnp.log(df * jnp.pi)
        - ld_q[None]
        - 0.5 * (df + k) * jnp.log1p(d2 / df)
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


def _is_ofv(P, data, mu, omega, sigma, etas, cov, n_samples, df, key, n_obs):
    t0 = time.perf_counter()
    N, k = etas.shape
    mu = jnp.asarray(mu)
    omega = jnp.asarray(omega)
    oinv = jnp.linalg.inv(omega)
    _, ld = jnp.linalg.slogdet(omega)
    bad = ~np.all(np.isfinite(etas), axis=1) | ~np.all(np.isfinite(cov), axis=(1, 2))
    center = np.where(bad[:, None], 0.0, etas)
    covq = np.where(bad[:, None, None], np.asarray(omega)[None], cov)
    chol_q = jnp.asarray(np.linalg.cholesky(covq + 1e-12 * np.eye(k)[None]))
    m = max(1, min(n_samples, _IS_BATCH // max(N, 1)))
    n_calls = -(-n_samples // m)
    parts = []
    for c in range(n_calls):
        lw = _is_logw(
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


def _coefficient_design(model, pop: Population, fd, iiv: tuple, estimate):
    """The estimated covariate coefficients as a mu-referenced regression (checked
    before anything compiles): ``(design, labels, log-scale mask, initial beta)``.

    Each coefficient must enter ``log`` of its parameter linearly (Monolix's and
    saemix's covariate model): a :class:`Power` (``theta log(x / ref)``), an
    :class:`Exponential` (``theta (x - ref)``) or a :class:`Categorical` (``log(factor)``
    times the category's indicator; ``beta`` is the log factor). The parameter must have
    IIV on a log transform. A coefficient's natural-scale bounds become bounds on
    ``beta``.

    Raises:
        ValueError: what :func:`fit_population` refuses (a missing or non-finite
            column, a factor that is not positive, a coefficient the data cannot inform,
            clashing labels), and a :class:`Linear` (or other non-log-linear) estimated
            effect, an estimated effect of a time-varying covariate, or one on a
            parameter without IIV or whose transform is not log; each naming the effect.
    """
    N, k = fd.n, len(iiv)
    effects = tuple(c for c in pop.covariates if c.estimate)
    if not effects:
        z = jnp.zeros((0,))
        return _Design(jnp.zeros((N, k, 0)), z, z), (), np.zeros(0, bool), np.zeros(0)
    for c in effects:
        if c.covariate in fd.varying:
            raise ValueError(
                f"saem: covariate effect {c.describe()} is estimated but {c.covariate!r} "
                "changes within subjects (time-varying): SAEM's covariate regression needs "
                "one value per subject. Fix its coefficient (estimate=False; SAEM fits "
                "fixed effects of time-varying covariates) or estimate it by FOCE-I "
                "(fit_population)"
            )
        if not isinstance(c, (Power, Exponential, Categorical)):
            raise ValueError(
                f"saem: covariate effect {c.describe()} is estimated but its log-factor is "
                f"not linear in its coefficient ({type(c).__name__}: log(1 + theta (x - "
                "ref))); SAEM estimates Power, Exponential and Categorical coefficients "
                "(mu-referenced). Use Exponential (the same effect near ref), fix it "
                "(estimate=False) or estimate it by FOCE-I (fit_population)"
            )
        if c.param not in iiv:
            raise ValueError(
                f"saem: covariate effect {c.describe()} is estimated but {c.param!r} has no "
                f"IIV; SAEM estimates coefficients of mu-referenced parameters (with IIV: "
                f"{list(iiv)}). Give {c.param!r} IIV, fix the coefficient or use "
                "fit_population"
            )
        if model.param(c.param).transform != "log":
            raise ValueError(
                f"saem: covariate effect {c.describe()} is estimated but {c.param!r} has "
                f"transform {model.param(c.param).transform!r}; SAEM supports covariate "
                "factors on log-transformed parameters only"
            )
    # the checks fit_population makes (columns, factors, informative data, labels)
    covariate_model(pop, fd, model, estimate)
    cols, lo, hi, b0, is_log, labels = [], [], [], [], [], []
    for c in effects:
        x = np.asarray(fd.covariates[c.covariate], float)
        j = iiv.index(c.param)
        lo_n, hi_n = c.coefficient_bounds()
        if isinstance(c, Categorical):
            for (label, v), grp in zip(c.coefficients().items(), c.groups()):
                col = np.zeros((N, k))
                col[:, j] = np.isin(x, np.asarray(grp, float)).astype(float)
                cols.append(col)
                lo.append(math.log(lo_n) if lo_n > 0 else -math.inf)
                hi.append(math.log(hi_n) if math.isfinite(hi_n) else math.inf)
                b0.append(math.log(v))
                is_log.append(True)
                labels.append(label)
            continue
        ((label, v),) = c.coefficients().items()
        col = np.zeros((N, k))
        if isinstance(c, Power):
            col[:, j] = np.log(x / c.ref)
        elif isinstance(c, Exponential):
            col[:, j] = x - c.ref
        cols.append(col)
        lo.append(lo_n)
        hi.append(hi_n)
        b0.append(v)
        is_log.append(False)
        labels.append(label)
    # a coefficient is kept strictly inside its bounds (as a Covariate requires), by
    # a relative 1e-9
    lo_a, hi_a = np.asarray(lo, float), np.asarray(hi, float)
    fl, fh = np.isfinite(lo_a), np.isfinite(hi_a)
    lo_a[fl] += 1e-9 * np.maximum(1.0, np.abs(lo_a[fl]))
    hi_a[fh] -= 1e-9 * np.maximum(1.0, np.abs(hi_a[fh]))
    D = _Design(jnp.asarray(np.stack(cols, -1)), jnp.asarray(lo_a), jnp.asarray(hi_a))
    return D, tuple(labels), np.asarray(is_log), np.asarray(b0, float)


def _prepare(model, data, population, error, output, solver, censoring, lloq, dvid, oc):
    pop = as_population(model, population)
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
        output_column=oc,
    )
    cmode = fit_censoring(fd, censoring)
    spec = make_spec(model, solver, pop.iiv, errors, outputs, cmode)
    P = _problem(model, pop, fd, spec)
    return pop, outputs, errors, solver, fd, cmode, spec, P


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
        individual: a :class:`FitResult` at these parameters to take the modes from.

    Returns:
        An :class:`ImportanceSamplingOFV` (OFV with its Monte-Carlo SE).

    Raises:
        ValueError: ``n_samples < 2`` or ``df <= 0``; invalid data or names.
    """
    if int(n_samples) < 2:
        raise ValueError(f"n_samples must be at least 2, got {n_samples}")
    if not (float(df) > 0):
        raise ValueError(f"df must be > 0, got {df}")
    pop, outputs, errors, solver, fd, cmode, spec, P = _prepare(
        model, data, population, error, output, solver, censoring, lloq, dvid, output_column
    )
    if not pop.iiv:
        raise ValueError("importance_sampling_ofv needs a population with IIV (an omega)")
    ind = individual
    if ind is None:
        ind = fit_individual(
            model,
            fd,
            pop,
            error,
            output=output,
            solver=solver,
            censoring=censoring,
        )
    sigma = np.concatenate([np.asarray(e.sigma()) for e in errors])
    mu = np.asarray(model.pack({k: jnp.asarray(pop.typical[k]) for k in pop.iiv}, pop.iiv))
    data_t = (P.tv, P.off, P.ev, P.ts, P.obs, P.mask)
    n_obs = int(np.sum(fd.mask)) - int(np.sum(fd.censored))
    return _is_ofv(
        P,
        data_t,
        mu,
        pop.omega,
        sigma,
        np.asarray(ind.etas),
        np.asarray(ind.cov_eta),
        int(n_samples),
        df,
        jax.random.PRNGKey(seed),
        n_obs,
    )


# ============================================================================ result
@dataclasses.dataclass(eq=False)
class SAEMResult(PopulationFitResult):
    """A SAEM population fit (a :class:`PopulationFitResult`; ``ofv`` is the
    importance-sampling objective).

    Extra attributes:
        ofv_se: Monte-Carlo SE of ``ofv``; importance: the
            :class:`ImportanceSamplingOFV`.
        history: a DataFrame of the iterations (typical values, Omega diagonal,
            residual SDs, random-walk acceptance rates, complete-data ``-2 log L``).
        n_burn, n_em, n_chains, seed: the settings.
    """

    ofv_se: float = float("nan")
    importance: ImportanceSamplingOFV | None = None
    history: pd.DataFrame | None = None
    n_burn: int = 0
    n_em: int = 0
    n_chains: int = 0
    seed: int = 0

    def summary(self) -> str:
        return (
            f"SAEM fit: {self.n_subjects} subjects, {self.n_obs} observations"
            + (f", {self.n_censored} censored ({self.censoring})" if self.n_censored else "")
            + f"; {self.n_burn} + {self.n_em} iterations, {self.n_chains} chains\n"
            f"OFV (importance sampling, NONMEM convention) = {self.ofv:.3f} "
            f"+- {self.ofv_se:.3f}; -2LL = {self.minus2ll:.3f}; AIC = {self.aic:.3f}\n"
            + self.estimates.to_string()
        )

    def __repr__(self) -> str:
        th = ", ".join(f"{k}={v:.4g}" for k, v in self.theta.items())
        return f"SAEMResult({th}; OFV={self.ofv:.3f} +- {self.ofv_se:.3f})"


def saem(
    model: Model,
    data,
    population: Population | dict,
    error: ErrorModel | Mapping[str, ErrorModel],
    *,
    estimate: Sequence[str] | None = None,
    omega: str = "diagonal",
    n_burn: int = 200,
    n_em: int = 300,
    n_chains: int = 3,
    kernels: Sequence[int] = (2, 2, 2),
    seed: int = 99,
    anneal: float = 0.75,
    coef_sa: float = 0.95,
    n_fim: int = 100,
    n_is: int = 5000,
    is_df: float = 5.0,
    output: str | None = None,
    solver: AbstractSolver | None = None,
    censoring: str | None = None,
    lloq: float | None = None,
    dvid=None,
    output_column: str = "DVID",
    verbose: bool = False,
) -> SAEMResult:
    """Population fit by SAEM (Kuhn & Lavielle 2005), batched over subjects.

    See the module docstring and ``docs/calibration.md`` for the algorithm. The
    parameters with IIV are mu-referenced (``g(p_i) = g(TV) + log(covariate factors) +
    eta_i``); their typical values (those in ``estimate``), Omega, the residual SDs and
    the coefficients of covariate effects made with ``estimate=True`` (power,
    exponential and categorical effects on log-normal IIV parameters; reported in
    ``estimates`` and ``covariate_effects`` as ``fit_population`` labels them, and put
    into ``population``) are estimated. After the iterations: standard errors (Louis'
    observed information over ``n_fim`` MCMC iterations at the estimates; 0 skips
    them), the post-hoc MAP fit, and the importance-sampling OFV (``n_is`` t draws per
    subject; 0 skips it).

    Arguments:
        model, data, population, error: as for :func:`fit_population` (the population
            and error SDs are the starting values).
        estimate: typical values to estimate (default: all parameters with IIV); each
            must have IIV.
        omega: ``"diagonal"`` or ``"full"``.
        n_burn: exploratory iterations (step size 1); n_em: smoothing iterations (step
            size ``1/k``); n_chains: MCMC chains per subject.
        kernels: MH iterations per SAEM iteration of the three kernels (population
            proposal, random walk on all components, random walk per component).
        seed: random seed (a fixed seed gives the same fit).
        anneal, coef_sa: simulated annealing over the first ``anneal * n_burn``
            iterations: variances shrink by at most ``coef_sa`` per iteration.
        verbose: print the iterations (typical values, Omega, sigma, acceptance).
        output, solver, censoring, lloq, dvid, output_column: as for
            :func:`fit_population` (M3/M4 censored records enter the likelihood).

    Returns:
        A :class:`SAEMResult`.

    Raises:
        ValueError: bad settings, unknown names, an estimated parameter without IIV,
            a covariate effect on a non-log-transformed IIV parameter; an estimated
            covariate coefficient that SAEM cannot regress on (a :class:`Linear`
            effect, a time-varying covariate, a parameter without IIV) or that the
            data cannot inform (the checks of :func:`fit_population`), naming the
            effect.
    """
    import pandas as pd

    t_start = time.perf_counter()
    if omega not in ("diagonal", "full"):
        raise ValueError(f"omega must be 'diagonal' or 'full', got {omega!r}")
    kernels = tuple(int(x) for x in kernels)
    if len(kernels) != 3 or min(kernels) < 0 or sum(kernels) == 0:
        raise ValueError(
            f"kernels must be three non-negative counts (population, all-component, "
            f"per-component MH iterations), not all 0; got {kernels}"
        )
    for name, v, lo in (
        ("n_burn", n_burn, 0),
        ("n_em", n_em, 1),
        ("n_chains", n_chains, 1),
        ("n_fim", n_fim, 0),
        ("n_is", n_is, 0),
    ):
        if int(v) != v or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v}")
    if not (0.0 <= anneal <= 1.0) or not (0.0 < coef_sa <= 1.0):
        raise ValueError(f"anneal must be in [0, 1] and coef_sa in (0, 1]; got {anneal}, {coef_sa}")
    if n_is == 1:
        raise ValueError("n_is must be 0 (no objective) or at least 2")
    pop0 = as_population(model, population)
    if not pop0.iiv:
        raise ValueError("saem needs a population with IIV (an omega over some parameters)")
    estimate = tuple(estimate) if estimate is not None else tuple(pop0.iiv)
    unknown = [k for k in estimate if k not in model.param_names]
    if unknown:
        raise ValueError(f"estimate names unknown parameters {unknown}")
    no_iiv = [k for k in estimate if k not in pop0.iiv]
    if no_iiv:
        raise ValueError(
            f"saem estimates typical values of parameters with IIV only (mu-referenced); "
            f"{no_iiv} have none: give them IIV in the population or leave them out of "
            f"estimate (IIV parameters: {list(pop0.iiv)})"
        )
    est_cov = [c for c in pop0.covariates if c.estimate]
    # the estimated effects leave the fixed offsets: their factors are mu + C_i beta
    pop_fix = pop0
    if est_cov:
        pop_fix = Population(
            model,
            typical=pop0.typical,
            covariates=[c for c in pop0.covariates if not c.estimate],
            omega=pop0.omega,
            iiv=list(pop0.iiv),
        )
    pop, outputs, errors, solver, fd, cmode, spec, P = _prepare(
        model, data, pop_fix, error, output, solver, censoring, lloq, dvid, output_column
    )
    N, k = fd.n, len(pop.iiv)
    iiv = tuple(pop.iiv)
    D, coef_labels, coef_log, beta0 = _coefficient_design(model, pop0, fd, iiv, estimate)
    nb = len(coef_labels)
    est_mask = np.asarray([q in estimate for q in iiv])
    est_idx = np.flatnonzero(est_mask)
    diagonal = omega == "diagonal"
    closed = cmode == "none" and all(len(e.names) == 1 for e in errors)
    S = _Settings(
        n_burn=int(n_burn),
        n_total=int(n_burn + n_em),
        n_sa=int(round(anneal * n_burn)),
        coef_sa=float(coef_sa),
        kernels=kernels,
        diagonal=diagonal,
        closed_form=closed,
        n_rep=int(n_chains),
        rate=0.4,
    )
    R = int(n_chains)
    data_r = _tile((P.tv, P.off, P.ev, P.ts, P.obs, P.mask), R)
    mu0 = np.asarray(model.pack({q: jnp.asarray(pop.typical[q]) for q in iiv}, iiv))
    om0 = np.asarray(pop.omega, float)
    if diagonal:
        om0 = np.diag(np.diag(om0))
    sig0 = np.concatenate([np.asarray(e.sigma()) for e in errors])
    z0 = jnp.broadcast_to(jnp.asarray(mu0)[None], (R * N, k))
    if nb:  # every chain starts at its subject's prior mean
        z0 = _prior_mean(jnp.asarray(mu0), jnp.asarray(beta0), D, R)
    tv_r, off_r, ev_r, ts_r, obs_r, mask_r = data_r
    L0, f0 = _simulate_jit(P.st, z0, tv_r, off_r, ev_r, ts_r, obs_r, mask_r, jnp.asarray(sig0))
    if not np.all(np.isfinite(np.asarray(L0))):
        bad = sorted({fd.ids[i % N] for i in np.flatnonzero(~np.isfinite(np.asarray(L0)))})
        raise ValueError(
            f"saem: the simulation at the starting typical values fails (or its "
            f"likelihood is not finite) for subject(s) {bad[:10]}; change the start"
        )
    sd0 = np.sqrt(np.diag(om0))
    s1_0, s2_0 = mu0, om0 + np.outer(mu0, mu0)
    if nb:  # subject-specific prior means mu + C_i beta
        m0 = mu0[None] + np.einsum("nkl,l->nk", np.asarray(D.C), beta0)
        s1_0, s2_0 = m0, om0 + m0.T @ m0 / N
    carry = _Carry(
        z=z0,
        L=L0,
        f=f0,
        mu=jnp.asarray(mu0),
        omega=jnp.asarray(om0),
        sigma=jnp.asarray(sig0),
        s1=jnp.asarray(s1_0),
        s2=jnp.asarray(s2_0),
        s3=jnp.asarray(sig0**2),
        d2=jnp.asarray(0.5 * sd0),
        d3=jnp.asarray(0.5 * sd0),
        beta=jnp.asarray(beta0),
    )
    key = jax.random.PRNGKey(seed)
    k_iter, k_fim, k_is = jax.random.split(key, 3)
    est_j = jnp.asarray(est_mask)
    mu_fixed = jnp.asarray(mu0)
    rows = []
    n_total = S.n_total
    sig_names = [
        (f"SIGMA_{n}" if len(outputs) == 1 else f"SIGMA_{o}_{n}")
        for o, e in zip(outputs, errors)
        for n in e.names
    ]
    if verbose:
        print(
            f"SAEM: {N} subjects x {R} chains, {k} random effects, {n_burn} exploratory + "
            f"{n_em} smoothing iterations, kernels {kernels}"
        )
    t_iter = time.perf_counter()
    for it0 in range(0, n_total, _CHUNK):
        carry, tr = _run_chunk(
            P.st, S, est_j, mu_fixed, D, data_r, carry, jnp.asarray(it0), k_iter, _CHUNK
        )
        tr = jax.tree.map(np.asarray, tr)
        th_chunk = {q: np.asarray(v) for q, v in model.unpack(jnp.asarray(tr["mu"]), iiv).items()}
        cf_chunk = np.where(coef_log[None], np.exp(tr["beta"]), tr["beta"])
        for i in range(_CHUNK):
            it = it0 + i
            if it >= n_total:
                break
            row: dict[str, object] = {
                "iteration": it + 1,
                "phase": "burn-in" if it < n_burn else "smoothing",
            }
            row.update({q: float(th_chunk[q][i]) for q in iiv})
            row.update({lb: float(cf_chunk[i][j]) for j, lb in enumerate(coef_labels)})
            row.update({f"OMEGA({q},{q})": float(tr["omega"][i][j]) for j, q in enumerate(iiv)})
            row.update({s: float(tr["sigma"][i][j]) for j, s in enumerate(sig_names)})
            row.update(
                accept_all=float(tr["acc2"][i]),
                accept_single=float(tr["acc3"][i]),
                complete_m2ll=float(tr["cll"][i]),
            )
            rows.append(row)
        if verbose:
            r = rows[-1]
            ths = " ".join(f"{q}={r[q]:.4g}" for q in (*iiv, *coef_labels))
            oms = " ".join(f"{r[f'OMEGA({q},{q})']:.3g}" for q in iiv)
            sgs = " ".join(f"{r[s]:.4g}" for s in sig_names)
            print(
                f"  iter {r['iteration']:4d}/{n_total} [{r['phase']:9s}] {ths} | "
                f"omega {oms} | sigma {sgs} | accept {r['accept_all']:.2f}/"
                f"{r['accept_single']:.2f} | -2LL(complete) {r['complete_m2ll']:.2f} | "
                f"{time.perf_counter() - t_iter:.1f} s"
            )
    history = pd.DataFrame(rows).set_index("iteration")
    mu = np.asarray(carry.mu)
    om = np.asarray(carry.omega)
    sig = np.asarray(carry.sigma)
    beta = np.asarray(carry.beta)
    if not all(np.all(np.isfinite(a)) for a in (mu, om, sig, beta)):
        raise FloatingPointError("saem: the iterations diverged (non-finite estimates)")
    lo_b, hi_b = np.asarray(D.lo), np.asarray(D.hi)
    tol_b = 1e-8 * np.maximum(1.0, np.abs(beta))
    at_bound = [
        lb
        for lb, b, lo_, hi_, t in zip(coef_labels, beta, lo_b, hi_b, tol_b)
        if b <= lo_ + t or b >= hi_ - t
    ]

    # --------------------------------------------------------------- standard errors
    phi = _pack_phi(mu, om, sig, est_idx, diagonal, beta)
    Pn = phi.shape[0]
    cov_phi = np.full((Pn, Pn), np.nan)
    if n_fim:
        if verbose:
            print(f"  standard errors: Louis' information over {n_fim} MCMC iterations")
        _, gbar, hbar = _louis_terms(
            P.st,
            S,
            jnp.asarray(est_idx),
            mu_fixed,
            D,
            data_r,
            carry,
            jnp.asarray(phi),
            k_fim,
            n_fim,
        )
        gbar = np.asarray(gbar).reshape(R, N, Pn).mean(axis=0)
        hbar = np.asarray(hbar).reshape(R, N, Pn, Pn).mean(axis=0)
        # I = sum_i -E[H_i + g_i g_i'] + E[g_i] E[g_i]'
        info = -np.sum(hbar, axis=0) + np.einsum("ni,nj->ij", gbar, gbar)
        info = 0.5 * (info + info.T)
        try:
            cov_phi = np.linalg.inv(info)
        except np.linalg.LinAlgError:
            pass

    theta_all = model.unpack(jnp.asarray(mu), iiv)
    theta = {q: float(theta_all[q]) for q in estimate}
    rows_t, cols_t = np.tril_indices(k) if not diagonal else (np.arange(k), np.arange(k))

    def natural(p):
        m_, o_, s_, b_ = _unpack_phi(
            p, k, len(est_idx), jnp.asarray(est_idx), mu_fixed, diagonal, nb
        )
        th_ = model.unpack(m_, iiv)
        th_v = [th_[iiv[j]] for j in est_idx]
        th_s = jnp.stack(th_v) if th_v else jnp.zeros((0,), p.dtype)
        cf = jnp.where(jnp.asarray(coef_log), jnp.exp(b_), b_)
        return jnp.concatenate([th_s, cf, o_[rows_t, cols_t], s_])

    nat = np.asarray(natural(jnp.asarray(phi)))
    Jn = np.asarray(jax.jacfwd(natural)(jnp.asarray(phi)))
    cov_nat = Jn @ cov_phi @ Jn.T
    se = np.sqrt(np.where(np.diag(cov_nat) >= 0, np.diag(cov_nat), np.nan))
    labels = (
        [iiv[j] for j in est_idx]
        + list(coef_labels)
        + [f"OMEGA({iiv[a]},{iiv[b]})" for a, b in zip(rows_t, cols_t)]
        + sig_names
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        rse = 100 * se / np.abs(nat)
    table = pd.DataFrame(dict(parameter=labels, estimate=nat, se=se, rse_pct=rse))
    table = table.set_index("parameter")

    errs_fit, off = {}, 0
    for o, e in zip(outputs, errors):
        errs_fit[o] = e.replace(sig[off : off + len(e.names)])
        off += len(e.names)
    err_fit = errs_fit[outputs[0]]
    coefs = nat[len(est_idx) : len(est_idx) + nb]
    cov_est = {lb: float(v) for lb, v in zip(coef_labels, coefs)}
    fitted_covs, o_ = [], 0
    for c in pop0.covariates:
        if c.estimate:
            m_ = len(c.coefficients())
            c = c.with_coefficients([float(v) for v in coefs[o_ : o_ + m_]])
            o_ += m_
        fitted_covs.append(c)
    fitted = Population(
        model,
        typical={**pop.typical, **theta},
        covariates=fitted_covs,
        omega=om,
        iiv=list(iiv),
    )
    if verbose:
        print("  post-hoc individual (MAP) fits")
    ind = fit_individual(
        model,
        fd,
        fitted,
        err_fit if len(outputs) == 1 else errs_fit,
        output=outputs[0] if len(outputs) == 1 else None,
        solver=solver,
        censoring=censoring,
    )
    from ._diagnostics import cwres as _cwres

    cw = _cwres(ind)
    n_cens = int(np.sum(fd.censored))
    n_obs = int(np.sum(fd.mask)) - n_cens
    isr = None
    ofv = ofv_se = float("nan")
    if n_is:
        if verbose:
            print(f"  importance sampling: {n_is} t({is_df:g}) draws per subject")
        # the fitted coefficients join the fixed covariate offsets
        P_is = _problem(model, fitted, fd, spec) if nb else P
        isr = _is_ofv(
            P_is,
            (P_is.tv, P_is.off, P_is.ev, P_is.ts, P_is.obs, P_is.mask),
            mu,
            om,
            sig,
            np.asarray(ind.etas),
            np.asarray(ind.cov_eta),
            int(n_is),
            is_df,
            k_is,
            n_obs,
        )
        ofv, ofv_se = isr.ofv, isr.se
    m2ll = ofv + n_obs * LOG_2PI
    n_par = Pn
    wall = time.perf_counter() - t_start
    if verbose:
        print(f"  done in {wall:.1f} s: OFV {ofv:.3f} +- {ofv_se:.3f}")
    return SAEMResult(
        theta=theta,
        omega=om,
        error=err_fit,
        population=fitted,
        ofv=ofv,
        minus2ll=m2ll,
        aic=m2ll + 2 * n_par,
        bic=m2ll + n_par * math.log(max(n_obs, 1)),
        n_obs=n_obs,
        n_subjects=N,
        n_params=n_par,
        estimates=table,
        cov_phi=cov_phi,
        individual=ind,
        cwres=cw,
        converged=bool(np.all(np.isfinite(nat))),
        n_outer=n_total,
        wall_s=wall,
        message=(
            f"SAEM: {n_burn} exploratory + {n_em} smoothing iterations, {R} chains, "
            f"kernels {kernels}, seed {seed}; iterations {time.perf_counter() - t_iter:.1f} s"
            + (
                f"; covariate coefficient(s) {at_bound} at their bounds (clipped in the "
                "M-step; their SEs are not meaningful)"
                if at_bound
                else ""
            )
        ),
        errors=errs_fit,
        censoring=cmode,
        n_censored=n_cens,
        covariate_effects=cov_est,
        ofv_se=ofv_se,
        importance=isr,
        history=history,
        n_burn=int(n_burn),
        n_em=int(n_em),
        n_chains=R,
        seed=int(seed),
    )
