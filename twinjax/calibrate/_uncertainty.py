"""Uncertainty of individual fits: sampling the Laplace posterior, and a new occasion.

The Laplace approximation of subject ``i``'s posterior is ``eta ~ N(eta_hat_i,
C_i)`` with ``C_i`` the inverse curvature at the mode (``FitResult.cov_eta``). Samples
on the natural scale are ``g^-1(g(TV_i) + eta)``; they respect every parameter's bounds.

A fit with inter-occasion variability (``FitResult.iov``) has, besides its etas, a
kappa per IOV parameter and occasion (``P = g^-1(g(TV) + eta_P + kappa_P)``). A future
dose is a NEW occasion (NONMEM's and Monolix's convention): its kappa is not informed
by the subject's data, so it is drawn from its prior ``N(0, omega_iov^2)``,
independently of the etas, whose posterior is the marginal ``N(eta_hat, cov_eta)``
(the same for a new occasion as for the fitted ones: the new kappa touches no data).
The individual point prediction of a new occasion uses ``kappa = 0``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from ._terms import Spec, individual_params

if TYPE_CHECKING:
    from ._map import FitResult

__all__ = ["posterior_samples"]


def check_occasion(occasion, what: str, allowed=("new",)) -> None:
    """Refuse an ``occasion=`` not in ``allowed`` (``None`` and/or ``"new"``), naming
    the function.

    ``"last"`` (continuing the last observed occasion with its estimated kappa) is
    refused with its reason: it needs the joint posterior of the etas and that kappa,
    and a :class:`FitResult` keeps only the two marginals (``cov_eta``, ``cov_kappa``).
    """
    if isinstance(occasion, str) and occasion == "last":
        raise ValueError(
            f"{what}: occasion='last' is not supported: continuing the last observed "
            "occasion needs the joint posterior of the etas and that occasion's kappa, "
            "and the fit keeps only their marginal covariances (cov_eta, cov_kappa); "
            "use occasion='new' (a new occasion, kappa drawn from N(0, omega_iov^2))"
        )
    named = isinstance(occasion, str) and occasion in allowed
    if not (named or (occasion is None and None in allowed)):
        raise ValueError(
            f"{what}: occasion must be one of {list(allowed)} ('new': a new occasion, "
            "kappa 0 in the point prediction and drawn from N(0, omega_iov^2) in the "
            f"samples), got {occasion!r}"
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


def new_occasion_layout(fit: FitResult, occasion="new"):
    """How a new occasion's kappas enter the individual parameters.

    Returns:
        ``(names, sd, A)``: the parameters shifted in the transformed coordinate
        (the fit's IIV parameters, then the IOV parameters without IIV), ``(m,)`` the
        SDs ``omega_iov`` of the ``m`` kappas (``fit.iov`` order; ``m = 0`` without IOV
        or with ``occasion=None``) and ``(m, len(names))`` the 0/1 matrix adding kappa
        ``a`` to its parameter's shift: the shifts are ``[eta | 0] + kappa @ A``.
    """
    names = tuple(fit.names)
    iov = (
        dict(getattr(fit, "iov", None) or {})
        if isinstance(occasion, str) and occasion == "new"
        else {}
    )
    names = names + tuple(q for q in iov if q not in names)
    A = np.zeros((len(iov), len(names)))
    for a, q in enumerate(iov):
        A[a, names.index(q)] = 1.0
    sd = np.sqrt(np.asarray([float(v) for v in iov.values()], float))
    return names, sd, A


def draw_random_effects(key, n: int, eta_hat, L, sd, A, include_mode: bool = True):
    """``(shifts (n, len(names)), eta (n, k), kappa (n, m))``: ``eta = eta_hat +
    z L'`` and ``kappa = sd * z_kappa`` with independent standard normals (the kappas'
    from ``fold_in(key, 1)``, so the etas are the same draws with and without IOV);
    ``include_mode``: the first draw is ``eta_hat`` with ``kappa = 0``. Traceable."""
    k, m = L.shape[0], A.shape[0]
    z = jax.random.normal(key, (n, k))
    zk = jax.random.normal(jax.random.fold_in(key, 1), (n, m))
    if include_mode:
        z = z.at[0].set(0.0)
        zk = zk.at[0].set(0.0)
    eta = jnp.asarray(eta_hat)[None] + z @ jnp.asarray(L).T
    kappa = zk * jnp.asarray(sd)[None]
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
    sample, with ``include_mode``, has kappa 0). For a fit without IOV both are the
    same.

    Arguments:
        fit: a :class:`FitResult`.
        n: number of samples.
        key: a JAX PRNG key.
        subject: the subject ID (default: the only one).
        include_mode: make the first sample the MAP estimate itself (kappa 0).
        occasion: ``None`` or ``"new"``.

    Returns:
        ``(params, etas)``: ``{name: (n,)}`` for every model parameter, and the
        ``(n, k)`` etas; with ``occasion="new"`` on an IOV fit ``(n, k + m)``:
        ``[eta | kappa]``, the ``m`` kappas in ``fit.iov`` order.

    Raises:
        ValueError: the subject's fit failed (no finite estimate), or an ``occasion``
            other than ``None`` / ``"new"`` (``"last"`` is refused, with its reason).
    """
    check_occasion(occasion, "posterior_samples", (None, "new"))
    i, eta_hat, L = subject_posterior(fit, subject)
    names, sd, A = new_occasion_layout(fit, occasion)
    shifts, eta, kappa = draw_random_effects(key, n, eta_hat, L, sd, A, include_mode)
    spec = Spec(fit.model, fit.solver, fit.output, names, fit.error)

    def rows(a):  # subject i's (typical value or change table row), n times
        a = jnp.asarray(a)
        return jnp.broadcast_to(a[i], (n,) + a.shape[1:])

    tv = {kk: jax.tree.map(rows, v) for kk, v in fit.typical.items()}
    etas = jnp.concatenate([eta, kappa], axis=1) if kappa.shape[1] else eta
    return individual_params(spec, tv, shifts), etas
