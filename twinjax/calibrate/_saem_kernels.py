"""SAEM's compiled iterations (part of :mod:`._saem`): the residual-SD M-step, the
Metropolis-Hastings kernels (the kappas' of inter-occasion variability in
:mod:`._saem_iov`), one SAEM iteration (simulation, stochastic approximation,
maximisation) and a chunk of them, and the posterior expectations of Louis' observed
information."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._map import obs_moments, obs_transform
from ._saem_covariates import CoefficientDesign, gls, prior_mean
from ._saem_iov import kappa_kernel, kappa_prior, kappa_stat, occasion_mask
from ._saem_problem import data_nll, quad, simulate_z, tile_rows


# ============================================================================ M-step
def sigma_opt(spec, f, sigma, obs, mask, closed_form: bool):
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
        return jnp.sum(data_nll(spec, f, jnp.exp(u), obs, mask))

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
class Carry(eqx.Module):
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
    # inter-occasion variability (empty without): kappas, variances, their SA, RW scales
    kappa: jax.Array  # (B, m, K)
    w_iov: jax.Array  # (m,) omega_iov^2
    s4: jax.Array  # (m,) SA of sum kappa^2 / (subject-occasions)
    d4: jax.Array  # (m,) random-walk scales of the kappas


class Settings(eqx.Module):
    n_burn: int = eqx.field(static=True)
    n_total: int = eqx.field(static=True)
    n_sa: int = eqx.field(static=True)
    coef_sa: float = eqx.field(static=True)
    kernels: tuple = eqx.field(static=True)
    diagonal: bool = eqx.field(static=True)
    closed_form: bool = eqx.field(static=True)
    n_rep: int = eqx.field(static=True)
    rate: float = eqx.field(static=True)
    iov_kernels: tuple = eqx.field(static=True, default=(1, 2))


def sa_gamma(it, n_burn):
    return jnp.where(it < n_burn, 1.0, 1.0 / (it - n_burn + 1.0))


def mcmc(P, S, c: Carry, key, data, mu, omega, sigma, adapt: bool):
    """The three MH kernels on every subject and chain, then (with IOV) the kappa
    kernels; returns the new carry and the kernels' acceptance rates (eta random walks
    on all / one component, kappa random walk).

    The kernels (the kappa kernels too) run in ONE loop with ONE batched simulation
    per step (the step's kernel picks the proposal and the acceptance ratio), so the
    compiled program holds one copy of the ODE solver instead of three (four with
    IOV); the draws and the order of the steps are those of one loop per kernel, one
    after the other (kernel ``n`` draws from ``fold_in(key_n, i)`` at its own step
    ``i``)."""
    tv, off, ev, ts, obs, mask = data
    B, k = c.z.shape
    dt = c.z.dtype
    oinv = jnp.linalg.inv(omega)
    chol = jnp.linalg.cholesky(omega + 1e-14 * jnp.eye(k, dtype=dt))
    keys = jax.random.split(key, 3)
    eye = jnp.eye(k, dtype=dt)
    mu_b = jnp.broadcast_to(mu, (B, k))
    n1, n2 = S.kernels[0], S.kernels[1]
    n3 = S.kernels[2] * k

    n_eta = n1 + n2 + n3
    n_kap = 0
    if P.iov:  # the kappa kernels: steps after the eta kernels' (etas then fixed)
        n_kap, k_prop, k_accept, k_finish = kappa_kernel(
            S.iov_kernels, jax.random.fold_in(key, 4), c.w_iov, c.d4, occasion_mask(tv, P.iov)
        )

    def step(s, st):
        z, kap, L, f, acc2, acc3, acc4 = st
        # kernel 0: proposals from the population distribution (prior), ratio of
        # likelihoods; 1: random walk on all components, 2: on one component at a
        # time (component i % k), both on the ratio of posteriors; 3 (IOV only): the
        # kappa kernels
        kind = (s >= n1).astype(jnp.int32) + (s >= n1 + n2).astype(jnp.int32)
        kind = kind + (s >= n_eta).astype(jnp.int32)
        off_s = jnp.where(
            kind == 0, 0, jnp.where(kind == 1, n1, jnp.where(kind == 2, n1 + n2, n_eta))
        )
        i = s - off_s
        ka, kb = jax.random.split(jax.random.fold_in(keys[jnp.minimum(kind, 2)], i))
        e = eye[i % k]

        def prior(z):
            return mu_b + jax.random.normal(ka, (B, k), dt) @ chol.T

        def walk_all(z):
            return z + jax.random.normal(ka, (B, k), dt) * c.d2[None]

        def walk_one(z):
            return z + (jax.random.normal(ka, (B,), dt) * jnp.dot(c.d3, e))[:, None] * e[None]

        branches = (prior, walk_all, walk_one) + ((lambda z: z),) * bool(P.iov)
        zp = jax.lax.switch(kind, branches, z)
        kp = jnp.where(kind == 3, k_prop(i, kap), kap) if P.iov else kap
        Lp, fp = simulate_z(P, zp, tv, off, ev, ts, obs, mask, sigma, kp)
        U, Up = L + quad(z, mu, oinv), Lp + quad(zp, mu, oinv)
        dU = jnp.where(kind == 0, Lp - L, Up - U)
        a = jnp.log(jax.random.uniform(kb, (B,), dt)) < -0.5 * dU
        rate = jnp.mean(a.astype(dt))
        if P.iov:
            a_k, r4 = k_accept(i, kp, kap, Lp, L)
            a = jnp.where(kind == 3, a_k, a)
            acc4 = acc4 + jnp.where(kind == 3, r4, 0.0)
        return (
            jnp.where(a[:, None], zp, z),
            jnp.where(a[:, None, None], kp, kap),
            jnp.where(a, Lp, L),
            jnp.where(a[:, None], fp, f),
            acc2 + jnp.where(kind == 1, rate, 0.0),
            acc3 + jnp.where(kind == 2, e * rate, 0.0),
            acc4,
        )

    zero = jnp.zeros((), dt)
    init = (c.z, c.kappa, c.L, c.f, zero, jnp.zeros((k,), dt), zero)
    z, kappa, L, f, acc2, acc3, acc4 = jax.lax.fori_loop(0, n_eta + n_kap, step, init)
    acc2 = acc2 / max(S.kernels[1], 1)
    acc3 = acc3 / max(S.kernels[2], 1)
    d4 = c.d4
    if P.iov:
        d4, acc4 = k_finish(acc4, adapt)
    d2, d3 = c.d2, c.d3
    if adapt:
        if S.kernels[1]:
            d2 = d2 * jnp.clip(1.0 + S.rate * (acc2 - 0.234), 0.5, 2.0)
        if S.kernels[2]:
            d3 = d3 * jnp.clip(1.0 + S.rate * (acc3 - 0.44), 0.5, 2.0)
        scale = jnp.sqrt(jnp.diag(omega))
        d2 = jnp.clip(d2, 1e-3 * scale, 1e3 * scale)
        d3 = jnp.clip(d3, 1e-3 * scale, 1e3 * scale)
    new = dataclasses.replace(c, z=z, L=L, f=f, d2=d2, d3=d3, kappa=kappa, d4=d4)
    return new, acc2, acc3, acc4


def saem_step(P, S, est, mu_fixed, D: CoefficientDesign, data, c: Carry, it, key):
    """One SAEM iteration: MH kernels, stochastic approximation, M-step."""
    tv, off, ev, ts, obs, mask = data
    mean = prior_mean(c.mu, c.beta, D, S.n_rep)
    c, acc2, acc3, acc4 = mcmc(P, S, c, key, data, mean, c.omega, c.sigma, adapt=True)
    g = sa_gamma(it, S.n_burn)
    z = c.z
    B = z.shape[0]
    s2 = c.s2 + g * (z.T @ z / B - c.s2)
    beta = c.beta
    if D.C.shape[-1] == 0:
        s1 = c.s1 + g * (jnp.mean(z, axis=0) - c.s1)
        mu = jnp.where(est, s1, mu_fixed)
        if D.mu_lo is not None:  # saem(bounds=): the constrained M-step of each mu_j
            mu = jnp.clip(mu, D.mu_lo, D.mu_hi)
        om = s2 - jnp.outer(s1, mu) - jnp.outer(mu, s1) + jnp.outer(mu, mu)
    else:  # per-subject statistics s1_i and the regression on the covariate design
        N = D.C.shape[0]
        zbar = jnp.mean(z.reshape(S.n_rep, N, -1), axis=0)
        s1 = c.s1 + g * (zbar - c.s1)
        mu, beta = gls(s1, c.omega, est, mu_fixed, c.beta, D)
        m = mu[None] + jnp.einsum("nkl,l->nk", D.C, beta)
        om = s2 - (s1.T @ m + m.T @ s1) / N + m.T @ m / N
    om = 0.5 * (om + om.T)
    if S.diagonal:
        om = jnp.diag(jnp.diag(om))
    sig_opt = sigma_opt(P.spec, c.f, c.sigma, obs, mask, S.closed_form)
    s3 = c.s3 + g * (sig_opt**2 - c.s3)
    var = s3
    anneal = it < S.n_sa
    dg = jnp.diag(om)
    dg_new = jnp.where(anneal, jnp.maximum(dg, S.coef_sa * jnp.diag(c.omega)), dg)
    om = om + jnp.diag(dg_new - dg)
    var = jnp.where(anneal, jnp.maximum(var, S.coef_sa * c.sigma**2), var)
    s4, w_iov = c.s4, c.w_iov
    if P.iov:  # omega_iov^2 = SA of sum kappa^2 / (subject-occasions), annealed
        occm = occasion_mask(tv, P.iov)
        s4 = c.s4 + g * (kappa_stat(c.kappa, occm) - c.s4)
        w_iov = jnp.where(anneal, jnp.maximum(s4, S.coef_sa * c.w_iov), s4)
    active = it < S.n_total
    new = dataclasses.replace(
        c, mu=mu, omega=om, sigma=jnp.sqrt(var), s1=s1, s2=s2, s3=s3, beta=beta, s4=s4, w_iov=w_iov
    )
    out = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, c)
    # complete-data -2 log-likelihood per chain (for progress): data + eta prior
    oinv = jnp.linalg.inv(out.omega)
    _, ld = jnp.linalg.slogdet(out.omega)
    mean_out = prior_mean(out.mu, out.beta, D, S.n_rep)
    U = out.L + quad(out.z, mean_out, oinv) + ld
    if P.iov:  # + the kappas' prior
        U = U + kappa_prior(out.kappa, out.w_iov, occasion_mask(tv, P.iov))
    cll = jnp.mean(U) * P.n
    trace = dict(
        mu=out.mu,
        beta=out.beta,
        omega=jnp.diag(out.omega),
        sigma=out.sigma,
        w_iov=out.w_iov,
        acc2=acc2,
        acc3=jnp.mean(acc3),
        acc4=acc4,
        cll=cll,
    )
    return out, trace


@eqx.filter_jit
def run_chunk(P, S, est, mu_fixed, D, data, c, it0, key, n: int):
    def body(c, i):
        it = it0 + i
        return saem_step(P, S, est, mu_fixed, D, data, c, it, jax.random.fold_in(key, it))

    return jax.lax.scan(body, c, jnp.arange(n))


def trace_rows(tr: dict, it0: int, n: int, n_burn: int, names) -> list:
    """The history rows of ``n`` iterations from ``it0`` (a chunk's trace on the host,
    with ``theta`` and ``coef`` on the natural scale); ``names``: the IIV parameters,
    coefficient labels, IOV parameters and residual SD labels."""
    iiv, coefs, iov, sigmas = names
    rows = []
    for i in range(n):
        it = it0 + i
        row: dict[str, object] = {
            "iteration": it + 1,
            "phase": "burn-in" if it < n_burn else "smoothing",
        }
        row.update({q: float(tr["theta"][i][j]) for j, q in enumerate(iiv)})
        row.update({lb: float(tr["coef"][i][j]) for j, lb in enumerate(coefs)})
        row.update({f"OMEGA({q},{q})": float(tr["omega"][i][j]) for j, q in enumerate(iiv)})
        row.update({f"OMEGA_IOV({q})": float(tr["w_iov"][i][j]) for j, q in enumerate(iov)})
        row.update({s: float(tr["sigma"][i][j]) for j, s in enumerate(sigmas)})
        row.update(accept_all=float(tr["acc2"][i]), accept_single=float(tr["acc3"][i]))
        if iov:
            row.update(accept_kappa=float(tr["acc4"][i]))
        row.update(complete_m2ll=float(tr["cll"][i]))
        rows.append(row)
    return rows


def progress_line(r: dict, names, n_total: int, elapsed: float) -> str:
    """One ``verbose`` line: the iteration's estimates and acceptance rates."""
    iiv, coefs, iov, sigmas = names
    ths = " ".join(f"{q}={r[q]:.4g}" for q in (*iiv, *coefs))
    oms = " ".join(f"{r[f'OMEGA({q},{q})']:.3g}" for q in iiv)
    oms += "".join(f" iov {q} {r[f'OMEGA_IOV({q})']:.3g}" for q in iov)
    sgs = " ".join(f"{r[s]:.4g}" for s in sigmas)
    acc = f"{r['accept_all']:.2f}/{r['accept_single']:.2f}"
    if iov:
        acc += f"/{r['accept_kappa']:.2f}"
    return (
        f"  iter {r['iteration']:4d}/{n_total} [{r['phase']:9s}] {ths} | omega {oms} | "
        f"sigma {sgs} | accept {acc} | -2LL(complete) {r['complete_m2ll']:.2f} | "
        f"{elapsed:.1f} s"
    )


# ============================================================================ FIM (Louis)
def unpack_phi(phi, k, n_est, est_idx, mu_fixed, diagonal, nb: int = 0, m: int = 0):
    """``phi = [mu (estimated) | beta | Omega (Cholesky, log diagonal) | log omega_iov
    (the m IOV SDs) | log sigma]`` -> ``(mu, Omega, sigma, beta, omega_iov^2)``."""
    mu = mu_fixed.at[est_idx].set(phi[:n_est])
    beta = phi[n_est : n_est + nb]
    rows, cols = np.tril_indices(k) if not diagonal else (np.arange(k), np.arange(k))
    no = len(rows)
    o0 = n_est + nb
    w = phi[o0 : o0 + no]
    vals = jnp.where(jnp.asarray(rows == cols), jnp.exp(w), w)
    Lc = jnp.zeros((k, k), phi.dtype).at[rows, cols].set(vals)
    w_iov = jnp.exp(2.0 * phi[o0 + no : o0 + no + m])
    return mu, Lc @ Lc.T, jnp.exp(phi[o0 + no + m :]), beta, w_iov


def pack_phi(mu, omega, sigma, est_idx, diagonal, beta=(), w_iov=()):
    k = omega.shape[0]
    Lc = np.linalg.cholesky(np.asarray(omega) + 1e-14 * np.eye(k))
    rows, cols = np.tril_indices(k) if not diagonal else (np.arange(k), np.arange(k))
    w = Lc[rows, cols]
    w = np.where(rows == cols, np.log(np.maximum(w, 1e-300)), w)
    return np.concatenate(
        [
            np.asarray(mu)[est_idx],
            np.asarray(beta, float),
            w,
            0.5 * np.log(np.asarray(w_iov, float)),
            np.log(np.asarray(sigma)),
        ]
    )


@eqx.filter_jit
def louis_terms(
    P, S, est_idx, mu_fixed, D: CoefficientDesign, data, c: Carry, phi, key, n_iter: int
):
    """Posterior means (per subject) of the complete-data score and of
    ``d2 log p + score score'`` over ``n_iter`` MCMC iterations at ``phi``."""
    tv, off, ev, ts, obs, mask = data
    k = c.z.shape[1]
    n_est = est_idx.shape[0]
    nb = D.C.shape[-1]
    m_iov = len(P.iov)
    args = (k, n_est, est_idx, mu_fixed, S.diagonal, nb, m_iov)
    mu, omega, sigma, beta, w_iov = unpack_phi(phi, *args)
    mean = prior_mean(mu, beta, D, S.n_rep)
    C_r = tile_rows(D.C, S.n_rep)  # (B, k, nb)
    occm = occasion_mask(tv, P.iov) if P.iov else jnp.zeros((c.z.shape[0], 0), bool)
    spec = P.spec

    def logp(ph, z, f, o, m, Ci, kap, om):  # one record set: complete-data log-likelihood
        mu_, om_, sg_, b_, w_ = unpack_phi(ph, *args)
        obs1 = jax.tree.map(lambda a: a[None], o)
        L = data_nll(spec, f[None], sg_, obs1, m[None])[0]
        d = z - (mu_ + Ci @ b_) if nb else z - mu_
        _, ld = jnp.linalg.slogdet(om_)
        if m_iov:  # the kappas' prior
            L = L + kappa_prior(kap[None], w_, om[None])[0]
        return -0.5 * (L + d @ jnp.linalg.solve(om_, d) + ld)

    grad = jax.vmap(jax.grad(logp), in_axes=(None, 0, 0, 0, 0, 0, 0, 0))
    hess = jax.vmap(jax.hessian(logp), in_axes=(None, 0, 0, 0, 0, 0, 0, 0))
    c = dataclasses.replace(c, mu=mu, omega=omega, sigma=sigma, beta=beta, w_iov=w_iov)
    P_ = phi.shape[0]
    B = c.z.shape[0]
    zero = (jnp.zeros((B, P_), phi.dtype), jnp.zeros((B, P_, P_), phi.dtype))

    def body(st, i):
        c, (gs, hs) = st
        c, _, _, _ = mcmc(P, S, c, jax.random.fold_in(key, i), data, mean, omega, sigma, False)
        g = grad(phi, c.z, c.f, obs, mask, C_r, c.kappa, occm)
        h = hess(phi, c.z, c.f, obs, mask, C_r, c.kappa, occm)
        return (c, (gs + g, hs + h + g[:, :, None] * g[:, None, :])), None

    (c, (gs, hs)), _ = jax.lax.scan(body, (c, zero), jnp.arange(n_iter))
    return c, gs / n_iter, hs / n_iter
