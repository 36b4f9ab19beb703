"""The FOCE-I objective of a population fit (:mod:`._nlme`) at an outer vector ``phi``:
the inner modes (the batched MAP fit, :func:`inner_modes`), the exact Hessians of the
individual objectives (:func:`exact_hessian`), the per-subject Laplace objective whose
derivative in ``phi`` is the total derivative with the modes following ``phi``
(:func:`ofv_terms`), and the objective with its exact gradient
(:func:`ofv_and_grad`)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..ode import Piecewise
from ._iov import with_occasions
from ._map_optimisers import lm_batched
from ._nlme_covariates import CovariateFactors
from ._nlme_outer import outer_coefs, prior_inverse, unpack_outer
from ._terms import posterior_terms


def _typical(model, lay, theta, base, factors, coefs=None, occ=None):
    """Covariate-adjusted typical values ``{name: (N,)}`` for natural ``theta``.

    ``factors``: ``{name: (N,)}`` fixed factors, or a :class:`CovariateFactors` evaluated at the
    covariate coefficients ``coefs`` (:func:`outer_coefs`). ``occ``: ``(N, K)`` occasion
    start times of a fit with IOV (the IOV parameters become LOCF Piecewise values).
    """
    if isinstance(factors, CovariateFactors):
        if coefs is None:
            raise ValueError("estimated covariate effects need their coefficients (coefs=)")
        factors = factors.evaluate(coefs)
    tv = {}
    for q in model.param_names:
        v = theta[q] if q in theta else base[q]
        f = factors[q]
        tv[q] = v * (f if isinstance(f, Piecewise) else jnp.asarray(f))
    if lay.iov:
        if occ is None:
            raise ValueError("a fit with IOV needs the occasion start times (occ=)")
        tv = with_occasions(tv, lay.iov, occ)
    return tv


def exact_hessian(spec, lay, base, factors, phi, eta, ev, ts, y, mask, occ=None):
    """``(N, k, k)`` exact Hessians ``d^2 O_i / d eta^2`` of the individual objectives.

    Forward over forward mode: the MAP gradient ``G`` of ``posterior_terms`` is exact
    (it uses the Jacobian ``df/deta``, not an approximation), and each subject's ``G_i``
    depends only on its own ``eta_i``, so one tangent ``e_j`` broadcast over the
    subjects gives column ``j`` of every subject's Hessian at once (``k`` passes).
    """
    theta, omega, sigma = unpack_outer(spec.model, lay, phi)
    tv = _typical(spec.model, lay, theta, base, factors, outer_coefs(lay, phi), occ)
    oinv, _ = prior_inverse(lay, phi, omega)
    return _hessian(spec, tv, eta, ev, ts, y, mask, sigma, oinv)


def _hessian(spec, tv, eta, ev, ts, y, mask, sigma, oinv):
    """:func:`exact_hessian` at given typical values, SDs and Omega inverse."""

    def grad(e):
        return posterior_terms(spec, tv, e, ev, ts, y, mask, sigma, oinv)[1]

    k = eta.shape[-1]

    def column(v):
        return jax.jvp(grad, (eta,), (jnp.broadcast_to(v, eta.shape),))[1]

    H = jax.vmap(column, out_axes=-1)(jnp.eye(k, dtype=eta.dtype))
    return 0.5 * (H + jnp.swapaxes(H, -1, -2))


def ofv_terms(spec, lay, base, factors, phi, eta, ev, ts, y, mask, hess, occ=None, laplacian=False):
    """Per-subject FOCE-I objective at ``phi`` with modes ``eta`` (N, k).

    ``hess``: the ``(N, k, k)`` exact Hessians of the individual objectives at ``eta``
    (:func:`exact_hessian`), a constant here. The value is the objective; its
    derivative in ``phi`` is the total derivative ``dOFV/dphi`` with the modes
    following ``phi``.
    """
    model = spec.model
    theta, omega, sigma = unpack_outer(model, lay, phi)
    tv = _typical(model, lay, theta, base, factors, outer_coefs(lay, phi), occ)
    oinv, ld_o = prior_inverse(lay, phi, omega)
    eta_s = jax.lax.stop_gradient(eta)
    O, G, H, _, _, ok = posterior_terms(spec, tv, eta_s, ev, ts, y, mask, sigma, oinv)
    # One differentiable Newton step with the EXACT Hessian of O_i in eta:
    # d(eta*)/d(phi) = -(d^2O/deta^2)^-1 d^2O/(deta dphi) (implicit function theorem).
    # The term O_i needs no mode derivative (G = 0 at the mode), but the Laplace
    # log-determinant depends on eta* through the curvature, and a first-order (Fisher)
    # curvature here would give a wrong d(eta*)/d(phi) and a wrong outer gradient.
    eye = jnp.eye(H.shape[-1], dtype=H.dtype)[None]
    Hx = jax.lax.stop_gradient(hess)
    # where it is not positive definite (a mode not reached) the Fisher curvature stands in
    good = ok & jnp.all(jnp.isfinite(jnp.linalg.cholesky(Hx)), (-1, -2))
    Hs = jnp.where(
        good[:, None, None], Hx, jax.lax.stop_gradient(jnp.where(ok[:, None, None], H, eye))
    )
    eta1 = eta_s - jnp.linalg.solve(Hs, jnp.where(ok[:, None], G, 0.0)[..., None])[..., 0]
    O1, _, H1, _, _, ok1 = posterior_terms(spec, tv, eta1, ev, ts, y, mask, sigma, oinv)
    if laplacian:
        # NONMEM's LAPLACIAN: the exact second derivatives of O_i in eta (the second
        # derivatives of the predictions included) at the mode; where they are not
        # positive definite (a mode not reached) the first-order curvature stands in
        He = _hessian(spec, tv, eta1, ev, ts, y, mask, sigma, oinv)
        pd = jnp.all(jnp.isfinite(jnp.linalg.cholesky(jax.lax.stop_gradient(He))), (-1, -2))
        H1 = jnp.where(pd[:, None, None], He, H1)
    _, ld_h = jnp.linalg.slogdet(jnp.where(ok1[:, None, None], H1 / 2.0, eye))
    ofv_i = O1 + ld_o + ld_h
    return jnp.where(ok & ok1, ofv_i, jnp.inf)


@eqx.filter_jit
def ofv_and_grad(spec, lay, base, factors, phi, eta, ev, ts, y, mask, occ=None, laplacian=False):
    """The FOCE-I objective (``laplacian``: the Laplace objective with the exact
    curvature) and its exact gradient in ``phi`` (forward mode)."""
    hess = exact_hessian(spec, lay, base, factors, phi, eta, ev, ts, y, mask, occ)

    def F(p):
        return jnp.sum(
            ofv_terms(spec, lay, base, factors, p, eta, ev, ts, y, mask, hess, occ, laplacian)
        )

    eye = jnp.eye(phi.shape[0], dtype=phi.dtype)
    vals, grads = jax.vmap(lambda v: jax.jvp(F, (phi,), (v,)))(eye)
    return vals[0], grads


@eqx.filter_jit
def inner_modes(spec, lay, base, factors, phi, eta0, ev, ts, y, mask, max_iter, tol, occ=None):
    theta, omega, sigma = unpack_outer(spec.model, lay, phi)
    tv = _typical(spec.model, lay, theta, base, factors, outer_coefs(lay, phi), occ)
    oinv, _ = prior_inverse(lay, phi, omega)
    return lm_batched(spec, tv, eta0, ev, ts, y, mask, sigma, oinv, max_iter, tol)
