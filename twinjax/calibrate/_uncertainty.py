"""Uncertainty of individual fits: sampling the Laplace posterior.

The Laplace approximation of subject ``i``'s posterior is ``eta ~ N(eta_hat_i,
C_i)`` with ``C_i`` the inverse curvature at the mode (``FitResult.cov_eta``). Samples
on the natural scale are ``g^-1(g(TV_i) + eta)``; they respect every parameter's bounds.
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


def posterior_samples(fit: FitResult, n: int, key, subject=None, *, include_mode: bool = True):
    """Parameter sets drawn from one subject's Laplace posterior.

    Arguments:
        fit: a :class:`FitResult`.
        n: number of samples.
        key: a JAX PRNG key.
        subject: the subject ID (default: the only one).
        include_mode: make the first sample the MAP estimate itself.

    Returns:
        ``(params, etas)``: ``{name: (n,)}`` for every model parameter and the
        ``(n, k)`` etas.

    Raises:
        ValueError: if the subject's fit failed (no finite estimate), or the fit has
            inter-occasion variability (its kappas are not drawn here).
    """
    from ._iov import refuse_iov

    refuse_iov(fit, "posterior_samples")
    i = fit.index(subject)
    eta_hat = np.asarray(fit.etas[i])
    cov = np.asarray(fit.cov_eta[i])
    if not (np.all(np.isfinite(eta_hat)) and np.all(np.isfinite(cov))):
        raise ValueError(f"subject {fit.ids[i]!r} has no finite fit (converged=False)")
    k = eta_hat.size
    L = np.linalg.cholesky(cov + 1e-14 * np.eye(k))
    z = jax.random.normal(key, (n, k))
    if include_mode:
        z = z.at[0].set(0.0)
    etas = jnp.asarray(eta_hat)[None] + z @ jnp.asarray(L).T
    spec = Spec(fit.model, fit.solver, fit.output, fit.names, fit.error)

    def rows(a):  # subject i's (typical value or change table row), n times
        a = jnp.asarray(a)
        return jnp.broadcast_to(a[i], (n,) + a.shape[1:])

    tv = {kk: jax.tree.map(rows, v) for kk, v in fit.typical.items()}
    return individual_params(spec, tv, etas), etas
