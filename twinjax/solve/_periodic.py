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

Convergence, per patient (``stop``):

``"residual"`` (default)
    the residual ``max_i |G(x)_i - x_i| * scale_i`` (``scale`` given) or
    ``max_i |G(x)_i - x_i| / (1 + |x_i|)`` (relative, ``scale=None``), evaluated at the
    iterate before the update; a patient has converged when it is below ``tol``, and
    then keeps ``G(x)`` (a periodic orbit to ``tol``).
``"step"``
    the size of the update just made, ``max_i |x'_i - x_i| * scale_i`` below ``tol``
    (``scale`` given) or, with ``scale=None``, ``max_i |x'_i - x_i|`` at most
    ``tol * max_i |x'_i|`` (relative to the size of the state, plus ``1e-30``); a
    converged patient keeps the new iterate ``x'``. For Newton's method the last step
    estimates the error of the iterate before it, so ``x'`` is accurate to about its
    square (the dosing steady state's criterion).

``mask`` (``(D,)`` booleans, default all): the components that are iterated. The others
(e.g. cumulative states, which have no periodic steady state) keep their start values
``x0``: ``G``'s values there are ignored, residuals and steps are taken over the mask
only, and Newton's matrix is ``J_G - I`` on the masked block and ``-I`` elsewhere.

The status codes are those of :class:`~twinjax.Status`: a failed map evaluation keeps
the integrator's code (and the patient stops), and a patient not converged after
``max_iter`` map evaluations gets ``Status.NOT_CONVERGED``.

``final=`` adds one more evaluation of ``G`` per patient at its result, in the
same loop and the same call of ``G`` (one copy of the map in the compiled program),
for what only the result needs: the circulation's densely saved last beat.

Users: ``models.circulation.to_periodic_steady_state`` (plain),
``models._multiscale.steady_state_cohort`` (Anderson), both with ``final``, and
the dosing steady state of SS=1 records (``solve/_steady_dosing.py``: Newton on the
dosing-interval map, ``stop="step"``, the cumulative states masked out).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._status import Status

METHODS = ("plain", "anderson", "newton")
STOPS = ("residual", "step")


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
        final: with ``final`` given, the third output of ``G`` at each patient's final
            evaluation (at ``x``; see :func:`solve_fixed_point`), else None.
        final_status: with ``final`` given, ``(n,)`` the status ``G`` gave that final
            evaluation, else None.
    """

    x: jax.Array
    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    status: jax.Array
    final: Any = None
    final_status: jax.Array | None = None


def check_options(
    method: str, batch: int, memory: int, stop: str = "residual", mask=None, D: int | None = None
) -> np.ndarray | None:
    """Raise a clear ``ValueError`` for an unknown method or stop, a bad batch/memory
    or mask (before any tracing). Returns the mask as a NumPy boolean array (or None).
    """
    if stop not in STOPS:
        raise ValueError(f"stop must be one of {STOPS}, got {stop!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if int(batch) < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if int(batch) > 1 and method != "plain":
        raise ValueError(f"batch > 1 is only for method='plain', got method={method!r}")
    if method == "anderson" and int(memory) < 1:
        raise ValueError(f"memory must be >= 1 for Anderson acceleration, got {memory}")
    if mask is None:
        return None
    try:
        m = np.asarray(mask)
    except jax.errors.TracerArrayConversionError:
        raise ValueError(
            "mask must be a concrete boolean array (known before tracing), got a traced value"
        ) from None
    if m.dtype != np.bool_ or m.ndim != 1 or (D is not None and m.shape[0] != D):
        raise ValueError(
            f"mask must be a 1-D boolean array of length D = {D} (one flag per state "
            f"component), got dtype {m.dtype} and shape {m.shape}"
        )
    if not m.any():
        raise ValueError("mask must select at least one component to iterate, got all False")
    return m


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
    stop: str = "residual",
    mask=None,
    fallback: bool = True,
    final: Any = None,
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
        stop: ``"residual"`` (default) or ``"step"``: what decides convergence (see
            the module notes).
        mask: ``(D,)`` booleans, the components iterated (a concrete array, not
            traced); the others keep ``x0``. Default: all.
        fallback: Anderson and Newton: a non-finite update is replaced by the plain
            step ``G(x)`` (True, default), or stops the patient with
            ``Status.NONFINITE`` (False: a singular Newton matrix is a failure).
        final: None (default), or a pytree of ``(n, ...)`` arrays (e.g. zeros) shaped
            as the third output of ``G`` below (``True``: zeros, their shapes from
            tracing ``G`` once more, which costs that trace): one more evaluation of
            ``G`` per patient, at its result ``x``, once it has stopped (converged,
            failed or out of iterations), in the same loop and through the same call
            of ``G`` as the iteration (so the compiled program holds ``G`` once: the
            circulation saves its last beat densely this way). ``G`` is then
            ``G(x, active, last) -> (G(x), status, aux)``: ``last`` ``(n,)`` marks the
            patients in their final evaluation (never active at the same time);
            ``aux`` of each patient's final evaluation replaces its entries of
            ``final`` in ``FixedPoint.final`` (its status: ``FixedPoint.final_status``).
            The iteration itself (iterates, counts, residuals, statuses) is the same
            as without.

    Returns:
        A :class:`FixedPoint` (with ``stop="step"``, ``residual`` is the size of the
        last update, absolute when ``scale`` is None).
    """
    n, D = x0.shape
    keep = check_options(method, batch, memory, stop, mask, D)
    aux0 = None if final is None or final is False else final
    final = aux0 is not None
    dtype = x0.dtype
    m = int(memory)
    batch = int(batch)

    def residual(x, gx):
        if scale is None:
            return jnp.abs(gx - x) / (1.0 + jnp.abs(x))
        return (gx - x) * scale

    def masked_max(a):  # (n,) max of |a| over the iterated components
        a = jnp.abs(a)
        return jnp.max(a if keep is None else jnp.where(keep[None, :], a, 0.0), axis=-1)

    no_final = jnp.zeros((n,), bool)

    def G2(x, active):  # ``G(x)`` and its status, whichever the form of ``G``
        return G(x, active, no_final)[:2] if final else G(x, active)

    def evaluate(x, status, active, last=None):
        if last is None:
            gx, st = G2(x, active)
            aux = None
        else:
            gx, st, aux = G(x, active, last)
        if keep is not None:  # components not iterated stay where they are
            gx = jnp.where(keep[None, :], gx, x)
        return gx, jnp.maximum(status, jnp.where(active, st, 0).astype(status.dtype)), st, aux

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
        J = jac(x, active) if jac is not None else _ad_jacobian(G2, x, active)
        eye = jnp.eye(D, dtype=dtype)[None, :, :]
        if keep is None:
            A = J - eye
        else:  # J - I on the iterated block, -I elsewhere (no coupling either way)
            A = jnp.where((keep[:, None] & keep[None, :])[None], J - eye, -eye)
        dx = jnp.linalg.solve(A, (x - gx)[..., None])[..., 0]
        return x + dx, dx

    def cond(c):
        it, done = c[0], c[2]
        if final:  # until every patient has had its final evaluation
            return jnp.any(~c[8][0])
        return jnp.any(~done) & (it < max_iter)

    def body(c):
        it, x, done, res, iters, status, conv_all, hist, fin = c
        if final:
            finaled, aux_kept, fstatus = fin
            stopped = done | (it >= max_iter)
            last = stopped & ~finaled  # their final evaluation, at their result x
            active = ~stopped
        else:
            active = ~done
        if batch > 1:  # unchecked evaluations first; the residual is that of the last

            def one(carry, _):
                return evaluate(*carry, active)[:2], None

            (x_b, status), _ = jax.lax.scan(one, (x, status), None, length=batch - 1)
        else:
            x_b = x
        if final:
            x_b = jnp.where(last[:, None], x, x_b)
            gx, status, st, aux = evaluate(x_b, status, active, last)
            aux_kept = jax.tree.map(
                lambda a, b: jnp.where(last.reshape((n,) + (1,) * (a.ndim - 1)), a, b),
                aux,
                aux_kept,
            )
            fin = (finaled | last, aux_kept, jnp.where(last, st, fstatus).astype(jnp.int32))
        else:
            gx, status = evaluate(x_b, status, active)[:2]
        f = residual(x_b, gx)
        iters = iters + jnp.where(active, batch, 0).astype(iters.dtype)
        if method == "anderson":
            dF, dG, f_prev, g_prev = hist
            x_new, dF, dG = anderson(it, f, gx, dF, dG, f_prev, g_prev)
            hist = (dF, dG, f, gx)
        elif method == "newton":
            x_new, dx = newton(x_b, gx, active)
        else:
            x_new = gx
        if method != "newton":
            dx = x_new - x_b
        if method != "plain" and fallback:  # a failed linear solve: the plain step
            ok = jnp.all(jnp.isfinite(x_new), axis=-1)
            x_new = jnp.where(ok[:, None], x_new, gx)
            dx = jnp.where(ok[:, None], dx, gx - x_b)
        elif method != "plain":  # ... or the patient stops, NONFINITE
            bad = active & ~jnp.all(jnp.isfinite(x_new), axis=-1)
            status = jnp.where(bad & (status == 0), Status.NONFINITE, status).astype(status.dtype)
        if stop == "step":  # the size of the update just made (Newton: its step)
            if scale is None:
                r = masked_max(dx)
                conv = active & (r <= tol * masked_max(x_new) + 1e-30)
            else:
                r = masked_max(dx * scale)
                conv = active & (r < tol)
            x = jnp.where(active[:, None], x_new, x)
        else:
            r = jnp.max(jnp.abs(f), axis=-1)
            conv = active & (r < tol)
            x = jnp.where(conv[:, None], gx, jnp.where(active[:, None], x_new, x))
        res = jnp.where(active, r, res)
        conv_all = conv_all | conv
        done = done | conv | (status != 0)
        return it + batch, x, done, res, iters, status, conv_all, hist, fin

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
        jnp.zeros((n,), bool),
        hist0,
    )
    fin0: tuple = ()
    if final:  # the kept final outputs start as ``final`` (True: zeros)
        if aux0 is True:  # (G traced once more for its shapes)
            shapes = jax.eval_shape(G, x0, no_final, no_final)[2]
            aux0 = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
        fin0 = (jnp.zeros((n,), bool), aux0, jnp.zeros((n,), jnp.int32))
    c = jax.lax.while_loop(cond, body, (*c0, fin0))
    _, x, _, res, iters, status, converged, _, fin = c
    status = jnp.where((status == 0) & ~converged, Status.NOT_CONVERGED, status)
    aux, fstatus = (fin[1], fin[2]) if final else (None, None)
    return FixedPoint(x, iters, res, converged, status.astype(jnp.int32), aux, fstatus)


def first_failure(status: jax.Array, new: jax.Array) -> jax.Array:
    """Combine status codes: a patient keeps its first nonzero code."""
    return jnp.where(status != 0, status, new).astype(jnp.int32)
