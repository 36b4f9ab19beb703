"""Uncertainty of individual fits: sampling the Laplace posterior, and occasions.

The Laplace approximation of subject ``i``'s posterior is ``eta ~ N(eta_hat_i,
C_i)`` with ``C_i`` the inverse curvature at the mode (``FitResult.cov_eta``). Samples
on the natural scale are ``g^-1(g(TV_i) + eta)``; they respect every parameter's bounds.

A fit with inter-occasion variability (``FitResult.iov``) has, besides its etas, a
kappa per IOV parameter and occasion (``P = g^-1(g(TV) + eta_P + kappa_P)``). A
forecast, dose or sample is on one of two occasions:

- ``"new"`` (NONMEM's and Monolix's convention for a future dose): a NEW occasion, whose
  kappa is not informed by the subject's data, so it is drawn from its prior ``N(0,
  omega_iov^2)``, independently of the etas, whose posterior is the marginal
  ``N(eta_hat, cov_eta)`` (the same for a new occasion as for the fitted ones: the new
  kappa touches no data). The point prediction uses ``kappa = 0``.
- ``"last"``: the subject's LAST observed occasion continues (e.g. the next dose of a
  course whose occasion is still running). Its kappa is the fitted ``kappa_hat`` of that
  occasion, in the point prediction too, and ``(eta, kappa_last)`` are drawn JOINTLY
  from the Laplace posterior ``N((eta_hat, kappa_hat), C_joint)``: ``C_joint`` is the
  ``(eta, kappa_last)`` block of ``2 H^-1``, ``H`` the curvature of the subject's MAP
  objective in all its random effects (etas and the kappas of every occasion; the same
  matrix whose blocks are ``cov_eta``, ``cov_eta_kappa`` and ``cov_kappa``), assembled
  by :func:`joint_posterior` (the etas and a kappa of the same subject are correlated
  a posteriori: both explain the same observations).

Both draw ``z_eta`` from ``key`` and ``z_kappa`` from ``fold_in(key, 1)`` and set
``eta = eta_hat + z_eta L'`` (``L`` the Cholesky factor of ``cov_eta``: the marginal
block of the joint factor), ``kappa = kappa_mean + z_eta L_ke' + z_kappa L_kk'`` (``"new"``:
``kappa_mean = 0``, ``L_ke = 0``, ``L_kk = diag(omega_iov)``), so a fit's etas are the
same draws whichever occasion is asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from ._terms import Spec, individual_params

if TYPE_CHECKING:
    from ._map import FitResult

__all__ = ["joint_posterior", "posterior_samples"]

OCCASIONS = ("new", "last")


def check_occasion(occasion, what: str, allowed=OCCASIONS) -> None:
    """Refuse an ``occasion=`` not in ``allowed`` (``None``, ``"new"``, ``"last"``),
    naming the function."""
    named = isinstance(occasion, str) and occasion in allowed
    if not (named or (occasion is None and None in allowed)):
        raise ValueError(
            f"{what}: occasion must be one of {list(allowed)} ('new': a new occasion, "
            "kappa 0 in the point prediction and drawn from N(0, omega_iov^2) in the "
            "samples; 'last': the subject's last observed occasion continues, its fitted "
            f"kappa and the joint posterior of eta and kappa), got {occasion!r}"
        )


def subject_posterior(fit: FitResult, subject=None):
    """``(i, eta_hat (k,), L (k, k))``: subject ``subject``'s row, Laplace mode and
    the Cholesky factor of its posterior covariance.

    Raises:
        ValueError: the subject's fit failed (no finite estimate).
    """
    i = fit.index(subject)
    eta_hat = np.asarray(fit.etas[i])
    cov = np.asarray(fit.cov_eta[i])
    if not (np.all(np.isfinite(eta_hat)) and np.all(np.isfinite(cov))):
        raise ValueError(f"subject {fit.ids[i]!r} has no finite fit (converged=False)")
    k = eta_hat.size
    return i, eta_hat, np.linalg.cholesky(cov + 1e-14 * np.eye(k))


def last_occasion(fit: FitResult, i: int) -> int:
    """The column of subject ``i``'s last observed occasion in ``fit.kappas``."""
    occ = fit.data.occasions
    return int(np.flatnonzero(np.asarray(occ.mask[i]))[-1])


def joint_posterior(fit: FitResult, subject=None):
    """Subject ``subject``'s Laplace posterior of ``(eta, kappa on its last occasion)``.

    The blocks of the fit's joint covariance ``2 H^-1`` of all the subject's random
    effects at its mode (``cov_eta``, ``cov_eta_kappa``, ``cov_kappa``), the rows of
    the etas and of the last observed occasion's kappas kept.

    Returns:
        ``(mean (k + m,), cov (k + m, k + m))``: ``[eta_hat | kappa_hat_last]`` (the
        ``m`` kappas in ``fit.iov`` order) and their joint covariance.

    Raises:
        ValueError: the fit has no IOV, or the subject's fit failed.
    """
    if not fit.iov or fit.kappas is None or fit.cov_kappa is None or fit.cov_eta_kappa is None:
        raise ValueError("joint_posterior: this fit has no inter-occasion variability (iov=)")
    i = fit.index(subject)
    k, m, K = len(fit.names), len(fit.iov), int(fit.kappas.shape[-1])
    last = last_occasion(fit, i)
    cols = [a * K + last for a in range(m)]
    mean = np.concatenate([np.asarray(fit.etas[i], float), np.asarray(fit.kappas[i])[:, last]])
    cov = np.empty((k + m, k + m))
    cov[:k, :k] = np.asarray(fit.cov_eta[i])
    cov[:k, k:] = np.asarray(fit.cov_eta_kappa[i])[:, cols]
    cov[k:, :k] = cov[:k, k:].T
    cov[k:, k:] = np.asarray(fit.cov_kappa[i])[np.ix_(cols, cols)]
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
        raise ValueError(f"subject {fit.ids[i]!r} has no finite fit (converged=False)")
    return mean, 0.5 * (cov + cov.T)


def occasion_layout(fit: FitResult, occasion="new", subject=None):
    """How the kappas of the forecast's occasion enter the individual parameters.

    Returns:
        ``(names, kappa_mean, Lke, Lkk, A)``: the parameters shifted in the
        transformed coordinate (the fit's IIV parameters, then the IOV parameters
        without IIV); the ``m`` kappas (``fit.iov`` order; ``m = 0`` without IOV or
        with ``occasion=None``) are ``kappa_mean + z_eta Lke' + z_kappa Lkk'``
        (``"new"``: ``0``, ``0``, ``diag(omega_iov)``; ``"last"``: the last
        occasion's ``kappa_hat`` and the rows of the joint Cholesky factor of
        :func:`joint_posterior`); ``(m, len(names))`` the 0/1 matrix adding kappa
        ``a`` to its parameter's shift: the shifts are ``[eta | 0] + kappa @ A``.
    """
    names = tuple(fit.names)
    k = len(names)
    iov = dict(getattr(fit, "iov", None) or {}) if isinstance(occasion, str) else {}
    names = names + tuple(q for q in iov if q not in names)
    m = len(iov)
    A = np.zeros((m, len(names)))
    for a, q in enumerate(iov):
        A[a, names.index(q)] = 1.0
    if occasion == "last" and m:
        mean, cov = joint_posterior(fit, subject)
        Lj = np.linalg.cholesky(cov + 1e-14 * np.eye(k + m))
        return names, mean[k:], Lj[k:, :k], Lj[k:, k:], A
    sd = np.sqrt(np.asarray([float(v) for v in iov.values()], float))
    return names, np.zeros(m), np.zeros((m, k)), np.diag(sd), A


def draw_random_effects(key, n: int, eta_hat, L, kappa_mean, Lke, Lkk, A, include_mode=True):
    """``(shifts (n, len(names)), eta (n, k), kappa (n, m))``: ``eta = eta_hat +
    z L'`` and ``kappa = kappa_mean + z Lke' + z_kappa Lkk'`` with independent standard
    normals (the kappas' from ``fold_in(key, 1)``, so the etas are the same draws with
    and without IOV); ``include_mode``: the first draw is ``eta_hat`` with ``kappa =
    kappa_mean``. Traceable."""
    k, m = L.shape[0], A.shape[0]
    z = jax.random.normal(key, (n, k))
    zk = jax.random.normal(jax.random.fold_in(key, 1), (n, m))
    if include_mode:
        z = z.at[0].set(0.0)
        zk = zk.at[0].set(0.0)
    eta = jnp.asarray(eta_hat)[None] + z @ jnp.asarray(L).T
    kappa = jnp.asarray(kappa_mean)[None] + z @ jnp.asarray(Lke).T + zk @ jnp.asarray(Lkk).T
    pad = jnp.zeros((n, A.shape[1] - k), eta.dtype)
    shifts = jnp.concatenate([eta, pad], axis=1) + kappa @ jnp.asarray(A)
    return shifts, eta, kappa


def posterior_samples(
    fit: FitResult, n: int, key, subject=None, *, include_mode: bool = True, occasion=None
):
    """Parameter sets drawn from one subject's Laplace posterior.

    Without ``occasion`` (the default) these are samples of the etas, and the
    parameters are ``g^-1(g(TV) + eta)``; for a fit with inter-occasion variability
    that is an IOV parameter's value without kappa (as in ``FitResult.params``), not
    its value on any occasion. With ``occasion="new"`` the parameters are those of a
    NEW occasion: each sample also draws the kappa of every IOV parameter from
    ``N(0, omega_iov^2)`` (independent of the etas and across samples; the first
    sample, with ``include_mode``, has kappa 0). With ``occasion="last"`` they are
    those of the subject's LAST observed occasion: ``(eta, kappa)`` drawn jointly from
    the Laplace posterior of the etas and that occasion's kappas (the first sample,
    with ``include_mode``, is the mode ``(eta_hat, kappa_hat)``); see
    :func:`joint_posterior`. For a fit without IOV all three are the same.

    Arguments:
        fit: a :class:`FitResult`.
        n: number of samples.
        key: a JAX PRNG key.
        subject: the subject ID (default: the only one).
        include_mode: make the first sample the MAP estimate itself.
        occasion: ``None``, ``"new"`` or ``"last"``.

    Returns:
        ``(params, etas)``: ``{name: (n,)}`` for every model parameter, and the
        ``(n, k)`` etas; with ``occasion="new"`` or ``"last"`` on an IOV fit ``(n, k +
        m)``: ``[eta | kappa]``, the ``m`` kappas in ``fit.iov`` order.

    Raises:
        ValueError: the subject's fit failed (no finite estimate), or an ``occasion``
            other than ``None`` / ``"new"`` / ``"last"``.
    """
    check_occasion(occasion, "posterior_samples", (None, *OCCASIONS))
    i, eta_hat, L = subject_posterior(fit, subject)
    names, km, lke, lkk, A = occasion_layout(fit, occasion, fit.ids[i])
    shifts, eta, kappa = draw_random_effects(key, n, eta_hat, L, km, lke, lkk, A, include_mode)
    spec = Spec(fit.model, fit.solver, fit.output, names, fit.error)

    def rows(a):  # subject i's (typical value or change table row), n times
        a = jnp.asarray(a)
        return jnp.broadcast_to(a[i], (n,) + a.shape[1:])

    tv = {kk: jax.tree.map(rows, v) for kk, v in fit.typical.items()}
    etas = jnp.concatenate([eta, kappa], axis=1) if kappa.shape[1] else eta
    return individual_params(spec, tv, shifts), etas
