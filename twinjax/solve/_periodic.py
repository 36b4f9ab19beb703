"""Periodic steady states as fixed points, batched over patients: one solver family.

A periodic steady state is a fixed point ``x = G(x)`` of a *period map* ``G`` (for
the circulation: the non-cumulative state at the start of a beat to the state one
beat later). :func:`solve_fixed_point` finds it for a whole cohort at once with one of
three methods, each patient converging (and stopping) on its own:

``"plain"``
    ``x <- G(x)``, the beat-by-beat simulation to steady state; with ``batch = k`` the
    residual is checked every ``k`` map evaluations (after the last of them).
``"anderson"``
    Anderson acceleration, type II with ``memory`` previous residuals (Walker & Ni,
    SIAM J Numer Anal 49:1715-1735, 2011): ``x <- G(x) - dG @ gamma`` with ``gamma``
    the regularised least-squares fit of the last residual by the last residual
    differences ``dF``. An affine combination of map values, so linear invariants of
    ``G`` (the circulation's blood volume) are kept exactly.
``"newton"``
    Newton on ``F(x) = G(x) - x``: ``x <- x - (J_G - I)^-1 (G(x) - x)``, with the
    Jacobian ``J_G`` of each patient from ``jac`` (a function) or by forward-mode
    automatic differentiation of ``G`` (one Jacobian-vector product per state, all
    patients at once: ``G`` must act on each patient's row independently).

Per patient: the residual is ``max_i |G(x)_i - x_i| * scale_i`` (``scale`` given) or
``max_i |G(x)_i - x_i| / (1 + |x_i|)`` (relative, ``scale=None``), evaluated at the
iterate before the update; a patient has converged when it is below ``tol``, and then
keeps ``G(x)`` (a periodic orbit to ``tol``). The status codes are those of
:class:`~twinjax.Status`: a failed map evaluation keeps the integrator's code (and the
patient stops), and a patient still above ``tol`` after ``max_iter`` map evaluations
gets ``Status.NOT_CONVERGED``.

Users: ``models.circulation.to_periodic_steady_state`` (plain) and
``models._multiscale.steady_state_cohort`` (Anderson). The dosing steady state
(``solve/_engine.py``, Newton on the dosing-interval map) is the next one to move here.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ._status import Status

METHODS = ("plain", "anderson", "newton")


class FixedPoint(eqx.Module):
    """The outcome of :func:`solve_fixed_point`, per patient (leading axis ``n``).

    Attributes:
        x: ``(n, D)`` the fixed point (converged patients: ``G`` of the last iterate;
            the others: their last iterate).
        iterations: ``(n,)`` map evaluations used (a multiple of ``batch``).
        residual: ``(n,)`` the last residual (``inf`` if never evaluated).
        converged: ``(n,)`` whether the residual fell below ``tol``.
        status: ``(n,)`` :class:`~twinjax.Status` codes (``NOT_CONVERGED`` for a patient
            that ran out of iterations).
    """

    x: jax.Array
    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    status: jax.Array


def check_options(method: str, batch: int, memory: int) -> None:
    """Raise a clear ``ValueError`` for an unknown method or bad batch/memory (before
    any tracing)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if int(batch) < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if int(batch) > 1 and method != "plain":
        raise ValueError(f"batch > 1 is only for method='plain', got method={method!r}")
    if method == "anderson" and int(memory) < 1:
        raise ValueError(f"memory must be >= 1 for Anderson acceleration, got {memory}")


def _ad_jacobian(G, x, active):
    """``(n, D, D)`` per-patient Jacobians of ``G`` at ``x`` (forward mode)."""
    D = x.shape[-1]

    def column(e):  # the same basis vector for every patient: each gets its own column
        t = jnp.broadcast_to(e, x.shape)
        return jax.jvp(lambda y: G(y, active)[0], (x,), (t,))[1]

    cols = jax.vmap(column)(jnp.eye(D, dtype=x.dtype))  # (D_j, n, D_i)
    return jnp.moveaxis(cols, 0, -1)


def solve_fixed_point(
    G: Callable,
    x0: jax.Array,
    *,
    method: str = "plain",
    tol,
    max_iter,
    scale: jax.Array | None = None,
    batch: int = 1,
    memory: int = 4,
    jac: Callable | None = None,
) -> FixedPoint:
    """Fixed points ``x = G(x)`` of a batched map, per patient (see the module notes).

    Arguments:
        G: ``G(x, active) -> (G(x), status)`` with ``x`` ``(n, D)``, ``active`` ``(n,)``
            bool (inactive patients may be skipped, e.g. zero-length segments) and
            ``status`` ``(n,)`` integer :class:`~twinjax.Status` codes.
        x0: ``(n, D)`` start.
        method: ``"plain"``, ``"anderson"`` or ``"newton"``.
        tol: residual tolerance (scalar, may be traced).
        max_iter: maximum map evaluations per patient (may be traced).
        scale: ``(n, D)`` residual weights, or None for the relative ``1 / (1 + |x|)``.
        batch: map evaluations per residual check (``"plain"`` only).
        memory: Anderson's number of previous residuals.
        jac: Newton's ``jac(x, active) -> (n, D, D)`` Jacobian of ``G`` (default:
            forward-mode AD of ``G``).

    Returns:
        A :class:`FixedPoint`.
    """
    check_options(method, batch, memory)
    n, D = x0.shape
    dtype = x0.dtype
    m = int(memory)
    batch = int(batch)

    def residual(x, gx):
        if scale is None:
            return jnp.abs(gx - x) / (1.0 + jnp.abs(x))
        return (gx - x) * scale

    def evaluate(x, status, active):
        gx, st = G(x, active)
        return gx, jnp.maximum(status, jnp.where(active, st, 0).astype(status.dtype))

    def anderson(it, f, gx, dF, dG, f_prev, g_prev):
        first = it == 0
        dF = jnp.where(first, dF, jnp.concatenate([dF[..., 1:], (f - f_prev)[..., None]], -1))
        dG = jnp.where(first, dG, jnp.concatenate([dG[..., 1:], (gx - g_prev)[..., None]], -1))
        valid = jnp.arange(m) >= m - jnp.minimum(it, m)  # filled history columns
        A = jnp.einsum("ndi,ndj->nij", dF, dF)
        sc = jnp.trace(A, axis1=-2, axis2=-1)[:, None, None] / m + 1e-30
        reg = jnp.where(valid, 1e-10, 1.0)[None, :] * jnp.eye(m, dtype=dtype)  # (m, m)
        A = A + reg[None, :, :] * sc
        b = jnp.einsum("ndi,nd->ni", dF, f)
        gam = jnp.linalg.solve(A, b[..., None])[..., 0]
        gam = jnp.where(valid[None, :], gam, 0.0)
        return gx - jnp.einsum("ndi,ni->nd", dG, gam), dF, dG

    def newton(x, gx, active):
        J = jac(x, active) if jac is not None else _ad_jacobian(G, x, active)
        A = J - jnp.eye(D, dtype=dtype)[None, :, :]
        dx = jnp.linalg.solve(A, (x - gx)[..., None])[..., 0]
        return x + dx

    def cond(c):
        it, done = c[0], c[2]
        return jnp.any(~done) & (it < max_iter)

    def body(c):
        it, x, done, res, iters, status, hist = c
        active = ~done
        if batch > 1:  # unchecked evaluations first; the residual is that of the last

            def one(carry, _):
                return evaluate(*carry, active), None

            (x_b, status), _ = jax.lax.scan(one, (x, status), None, length=batch - 1)
        else:
            x_b = x
        gx, status = evaluate(x_b, status, active)
        f = residual(x_b, gx)
        r = jnp.max(jnp.abs(f), axis=-1)
        res = jnp.where(active, r, res)
        iters = iters + jnp.where(active, batch, 0).astype(iters.dtype)
        if method == "anderson":
            dF, dG, f_prev, g_prev = hist
            x_new, dF, dG = anderson(it, f, gx, dF, dG, f_prev, g_prev)
            hist = (dF, dG, f, gx)
        elif method == "newton":
            x_new = newton(x_b, gx, active)
        else:
            x_new = gx
        if method != "plain":  # a failed linear solve falls back to the plain step
            ok = jnp.all(jnp.isfinite(x_new), axis=-1)
            x_new = jnp.where(ok[:, None], x_new, gx)
        conv = active & (r < tol)
        x = jnp.where(conv[:, None], gx, jnp.where(active[:, None], x_new, x))
        done = done | conv | (status != 0)
        return it + batch, x, done, res, iters, status, hist

    if method == "anderson":
        z = jnp.zeros((n, D, m), dtype)
        hist0: tuple = (z, z, jnp.zeros((n, D), dtype), jnp.zeros((n, D), dtype))
    else:
        hist0 = ()
    c0 = (
        jnp.zeros((), jnp.int32),
        x0,
        jnp.zeros((n,), bool),
        jnp.full((n,), jnp.inf, dtype),
        jnp.zeros((n,), jnp.int32),
        jnp.zeros((n,), jnp.int32),
        hist0,
    )
    _, x, _, res, iters, status, _ = jax.lax.while_loop(cond, body, c0)
    converged = res < tol
    status = jnp.where((status == 0) & ~converged, Status.NOT_CONVERGED, status)
    return FixedPoint(x, iters, res, converged, status.astype(jnp.int32))


def first_failure(status: jax.Array, new: jax.Array) -> jax.Array:
    """Combine status codes: a patient keeps its first nonzero code."""
    return jnp.where(status != 0, status, new).astype(jnp.int32)
