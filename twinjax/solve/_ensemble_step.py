"""One step of ``solvers.Ensemble`` for the whole batch: the explicit Runge-Kutta
stages (or the Rosenbrock step of ``_rosenbrock.py``), the dense output of the step
and the starting step of a segment. Functions of the method's tableau, on either
layout of ``_ensemble_layout.py``."""

from __future__ import annotations

import jax.numpy as jnp

from . import _rosenbrock
from ._ensemble_layout import col, rms, tmap
from ._tableaus import RosenbrockTableau


def step(tab, f, t, y, k1, h, args):
    """One step for the whole batch: ``y``, ``k1`` stacked ``(S, N)`` (or tuples of
    ``S`` rows, see ``Ensemble._rows``), ``h`` ``(N,)``, ``tab`` the method's
    tableau; returns ``(y1, k_end, err, ks)`` (``k_end`` None when the method is not
    FSAL, ``err`` None for a fixed step)."""
    if isinstance(tab, RosenbrockTableau):
        y1, err, Ks = _rosenbrock.step(tab, f, t, y, k1, h, args)
        return y1, None, err, Ks
    dtype = (y[0] if isinstance(y, tuple) else y).dtype
    hc = col(h, y)
    # (h a_ij) k_j: one product h a_ij per coefficient, shared by the states
    # (h (a_ij k_j) took two multiplications per state)
    ks = [k1]
    for i, row in enumerate(tab.a):
        acc = y
        for aij, kj in zip(row, ks):
            if aij != 0.0:
                hcoef = hc * jnp.asarray(aij, dtype)
                acc = tmap(lambda a, k, w=hcoef: a + w * k, acc, kj)
        ks.append(f(t + tab.c[i + 1] * h, acc, args))
    if tab.fsal:
        y1 = acc  # the last stage is evaluated at the solution
        k_end = ks[-1]
    else:
        y1 = y
        for bi, ki in zip(tab.b, ks):
            if bi != 0.0:
                hcoef = hc * jnp.asarray(bi, dtype)
                y1 = tmap(lambda a, k, w=hcoef: a + w * k, y1, ki)
        k_end = None
    err = None
    if tab.b_err is not None:
        terms = [(jnp.asarray(ei, dtype), ki) for ei, ki in zip(tab.b_err, ks) if ei != 0.0]
        err = tmap(lambda k: terms[0][0] * k, terms[0][1])
        for c, ki in terms[1:]:
            err = tmap(lambda a, k, c=c: a + c * k, err, ki)
        err = tmap(lambda e: hc * e, err)
    return y1, k_end, err, ks


def dense_data(tab, ks):
    """What the dense output needs of a step's stages ``ks`` besides its ends: the
    Rosenbrock stages it uses, ``sum_i d_i k_i`` of an explicit method with a 4th-order
    continuous extension (DOPRI5: one ``(S, N)`` array instead of seven), else None."""
    if isinstance(tab, RosenbrockTableau):
        return ks[: len(tab.H)]
    if tab.dense is None:
        return None
    kd = None
    for di, ki in zip(tab.dense, ks):
        if di != 0.0:
            term = tmap(lambda k, d=di: jnp.asarray(d, k.dtype) * k, ki)
            kd = term if kd is None else tmap(jnp.add, kd, term)
    return kd


def dense(tab, theta, y0, y1, k0, k1, h, kd):
    """States at ``t + theta h`` from the step's data.

    ``theta``: ``(N, K)`` (K points per patient); step data ``(S, N)``; ``kd`` the
    step's :func:`dense_data`; returns ``(S, N, K)``; ``tab`` the method's tableau.
    """
    if isinstance(tab, RosenbrockTableau):
        return _rosenbrock.dense(theta, y0, y1, kd)
    th = theta[None]
    y0, y1, k0, k1 = (a[..., None] for a in (y0, y1, k0, k1))
    hc = h[None, :, None]
    dy = y1 - y0
    r3 = hc * k0 - dy
    r4 = dy - hc * k1 - r3
    r5 = 0.0 if kd is None else hc * kd[..., None]
    return y0 + th * (dy + (1 - th) * (r3 + th * (r4 + (1 - th) * r5)))


def initial_step(solver, f, t0, t1, y0, f0, args):
    """The first step of a segment per patient: ``solver.dt`` where given (clipped to
    the segment), else the starting-step heuristic of Hairer, Norsett & Wanner (I,
    II.4) on ``solver``'s tolerances and order."""
    if solver.dt is not None:
        return jnp.minimum(jnp.full_like(t0, solver.dt), jnp.maximum(t1 - t0, 0.0))
    sc = tmap(lambda y: solver.atol + solver.rtol * jnp.abs(y), y0)
    d0 = rms(tmap(jnp.divide, y0, sc))
    d1 = rms(tmap(jnp.divide, f0, sc))
    h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / jnp.where(d1 > 0, d1, 1.0))
    hc = col(h0, y0)
    f1 = f(t0 + h0, tmap(lambda y, k: y + hc * k, y0, f0), args)
    d2 = rms(tmap(lambda a, b, c: (a - b) / c, f1, f0, sc)) / h0
    dm = jnp.maximum(d1, d2)
    order = solver.tableau.order
    h1 = jnp.where(
        dm <= 1e-15,
        jnp.maximum(1e-6, h0 * 1e-3),
        jnp.power(0.01 / jnp.where(dm > 0, dm, 1.0), 1.0 / (order + 1)),
    )
    h = jnp.minimum(100 * h0, h1)
    return jnp.minimum(h, jnp.maximum(t1 - t0, 0.0))
