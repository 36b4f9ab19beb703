"""Inter-occasion variability in SAEM (part of :mod:`._saem`), as Monolix builds it
(Monolix documentation, "Inter-occasion variability"): a parameter ``P`` with IOV is,
on occasion ``k`` of subject ``i``,

```
P_ik = g^-1( mu + c_i + eta_i + kappa_ik ),   kappa_ik ~ N(0, omega_iov_P^2)
```

(``g^-1(g(TV_i) + kappa_ik)`` for a parameter without IIV), one variance per parameter
shared by all occasions; the data convention and checks are those of FOCE-I's
(:mod:`._iov`).

The kappas are extra latent variables of the EM, ``(B, m, K)`` per chain (``m`` IOV
parameters, ``K`` occasions, padded). Each SAEM iteration, after the eta kernels, they
are sampled by Metropolis-Hastings kernels on all subjects and chains at once, one
occasion block ``kappa_{., ., o}`` (the ``m`` kappas of occasion ``o``) at a time:
proposals from the prior ``N(0, omega_iov^2)`` (accepted on the likelihood ratio), then
random walks ``kappa_o + d * e`` (accepted on the posterior ratio; ``d`` adapted as the
eta kernels' scales, target 0.44 for one parameter, 0.234 for several). Each proposal is
one batched simulation. Padding occasions (``PAD_TIME`` starts) are never moved: their
kappas stay 0 and touch no data. The sufficient statistic of ``omega_iov^2`` is ``sum
kappa^2 / (number of subject-occasions)`` per parameter, stochastically approximated;
the M-step sets ``omega_iov^2`` to it (with the same simulated annealing as Omega's
diagonal).

The importance-sampling objective integrates over ``(eta, kappa)`` jointly: the t
proposal is centred at the post-hoc MAP modes of both with the joint Laplace covariance
(:func:`joint_laplace`), over the real occasions only (a marginal of a multivariate t
is a t of the same degrees of freedom).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..dosing._regimen import PAD_TIME
from ._iov import iov_precision, with_occasions
from ._terms import make_spec, posterior_terms, typical_values


def occasion_mask(tv: dict, iov: tuple):
    """``(B, K)`` True for the real occasions (padding occasions start at
    ``PAD_TIME``, see :mod:`._iov`), read from an IOV parameter's Piecewise times."""
    return tv[iov[0]].times < 0.5 * PAD_TIME


def kappa_prior(kappa, w, occm):
    """Per row ``sum over real occasions and parameters of kappa^2 / w + log w``
    (``-2 log p(kappa)`` without ``log 2 pi``)."""
    t = kappa**2 / w[None, :, None] + jnp.log(w)[None, :, None]
    return jnp.sum(jnp.where(occm[:, None, :], t, 0.0), axis=(1, 2))


def kappa_stat(kappa, occm):
    """``(m,)`` ``sum kappa^2 / (number of subject-occasions)`` over the real
    occasions of every row (subjects times chains)."""
    n = jnp.maximum(jnp.sum(occm), 1)
    return jnp.sum(jnp.where(occm[:, None, :], kappa**2, 0.0), axis=(0, 2)) / n


def kappa_kernel(counts, key, w, d, occm):
    """The kappa kernels of one SAEM iteration (module docstring), as steps of the
    eta kernels' loop (one batched simulation per step, shared with the eta kernels).

    Arguments:
        counts: ``(n_prior, n_rw)`` sweeps over the occasions of each kernel.
        key: the kernels' key (step ``i`` draws from ``fold_in(key, i)``).
        w: ``(m,)`` the variances; d: ``(m,)`` random-walk scales; occm: ``(B, K)``
            real occasions.

    Returns:
        ``(n, propose, accept, finish)``: the number of steps (prior proposals first,
        then random walks, each a sweep over the occasions); ``propose(i, kappa)`` the
        proposal ``(B, m, K)`` of step ``i``; ``accept(i, kp, kappa, Lp, L)`` the
        accepted rows ``(B,)`` and the step's contribution to the random walk's
        acceptance rate; ``finish(acc, adapt)`` the adapted scales and the acceptance
        rate ``(d, acc)``.
    """
    K = occm.shape[-1]
    sd = jnp.sqrt(w)
    eye = jnp.eye(K, dtype=bool)
    n_real = jnp.maximum(jnp.sum(occm, axis=0), 1)  # (K,)
    n_prior = counts[0] * K

    def keys(i):
        return jax.random.split(jax.random.fold_in(key, i))

    def propose(i, kap):
        B, m, _ = kap.shape
        o = i % K
        rw = i >= n_prior
        ka, _ = keys(i)
        sel = (eye[o][None, :] & occm)[:, None, :]  # (B, 1, K)
        e = jax.random.normal(ka, (B, m), kap.dtype)
        new = jnp.where(rw, kap[:, :, o] + e * d[None], e * sd[None])
        return jnp.where(sel, new[:, :, None], kap)

    def accept(i, kp, kap, Lp, L):
        B = kap.shape[0]
        o = i % K
        rw = i >= n_prior
        _, kb = keys(i)
        prior = kappa_prior(kp, w, occm) - kappa_prior(kap, w, occm)
        dU = Lp - L + jnp.where(rw, prior, 0.0)  # likelihood / posterior ratio
        real = occm[:, o]
        a = (jnp.log(jax.random.uniform(kb, (B,), kap.dtype)) < -0.5 * dU) & real
        return a, jnp.where(rw, jnp.sum(a) / n_real[o] / K, 0.0).astype(kap.dtype)

    def finish(acc, adapt: bool):
        m = w.shape[0]
        acc = acc / max(counts[1], 1)
        d_new = d
        if adapt and counts[1]:
            target = 0.44 if m == 1 else 0.234
            d_new = d * jnp.clip(1.0 + 0.4 * (acc - target), 0.5, 2.0)
            d_new = jnp.clip(d_new, 1e-3 * sd, 1e3 * sd)
        return d_new, acc

    return (counts[0] + counts[1]) * K, propose, accept, finish


# ============================================================================ objective
@eqx.filter_jit
def _curvature(spec, tv, eta, ev, ts, obs, mask, sigma, omega_inv):
    return posterior_terms(spec, tv, eta, ev, ts, obs, mask, sigma, omega_inv)[2]


def joint_laplace(model, pop, fd, spec, sigma, w: dict, ind):
    """The t proposal of the importance sampling with IOV: ``(center (N, d), cov (N, d,
    d), dmask (N, d))`` over ``[eta | kappa]`` (``d = k + m K``, kappas parameter by
    parameter, occasion by occasion), centred at the post-hoc MAP modes ``ind`` (a
    :class:`FitResult` with ``kappas``), with the joint Laplace covariance ``2 H^-1``
    (the MAP objective's curvature, :func:`posterior_terms`). Padding occasions'
    kappas are out of the proposal (``dmask`` False, centre 0, unit variance, no
    correlation); a subject whose modes are not finite gets the prior."""
    names = tuple(w)
    K = fd.occasions.k
    N, k = fd.n, len(pop.iiv)
    spec_i = make_spec(
        model, spec.solver, pop.iiv, spec.all_errors(), spec.all_outputs(), spec.censoring,
        names, K,
    )  # fmt: skip
    tv = typical_values(pop, fd.covariates, N, fd.varying)
    tv = with_occasions({q: jnp.asarray(v) for q, v in tv.items()}, names, fd.occasions.times)
    prec = iov_precision(w, names, K)
    om = np.asarray(pop.omega, float)
    prior = np.zeros((k + prec.size,) * 2)
    prior[:k, :k] = om
    prior[k:, k:] = np.diag(1.0 / prec)
    kap = np.asarray(ind.kappas, float).reshape(N, -1)
    center = np.concatenate([np.asarray(ind.etas, float), kap], axis=1)
    good = np.all(np.isfinite(center), axis=1)
    center = np.where(good[:, None], center, 0.0)
    H = _curvature(
        spec_i,
        tv,
        jnp.asarray(center),
        fd.ev,
        jnp.asarray(fd.t_eval),
        fd.obs(),
        jnp.asarray(fd.mask),
        jnp.asarray(sigma),
        jnp.asarray(np.linalg.inv(prior)),
    )
    H = np.asarray(H)
    good &= np.all(np.isfinite(H), axis=(1, 2))
    dmask = np.concatenate([np.ones((N, k), bool), np.tile(fd.occasions.mask, len(names))], 1)
    cov = np.empty_like(H)
    for i in range(N):
        try:
            c = 2.0 * np.linalg.inv(H[i]) if good[i] else prior
            np.linalg.cholesky(c)
        except np.linalg.LinAlgError:
            c, good[i] = prior, False
        cov[i] = c
    center = np.where(good[:, None], center, 0.0)
    real = dmask[:, :, None] & dmask[:, None, :]
    eye = np.eye(cov.shape[1], dtype=bool)[None]
    cov = np.where(real, cov, np.where(eye, 1.0, 0.0))
    center = np.where(dmask, center, 0.0)
    return center, cov, dmask


def is_proposal(model, pop, fd, spec, sigma, w: dict, ind):
    """``(center, cov, iov)`` of :func:`~twinjax.calibrate._saem_is.is_ofv`: the
    post-hoc etas and their Laplace covariances (``iov`` None) or, with IOV (``w``:
    ``{param: omega_iov^2}``), the joint proposal of :func:`joint_laplace` and ``iov =
    (omega_iov^2, dmask)``."""
    if not w:
        return np.asarray(ind.etas), np.asarray(ind.cov_eta), None
    center, cov, dmask = joint_laplace(model, pop, fd, spec, sigma, w, ind)
    return center, cov, (np.asarray(list(w.values()), float), dmask)
