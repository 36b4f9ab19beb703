"""Batched Rosenbrock steps for ``solvers.Ensemble`` (stiff models), state-major.

Everything here works on structure-of-arrays state ``Y[S, N]`` (one contiguous row
of patients per state), like the explicit steps: no ``vmap`` over patients and no
Python loop over them.

- **Jacobian** ``J[i, j] = df_i/dy_j`` per patient by forward-mode AD: the field is
  linearised once at the step's start (``jax.linearize``) and the linear map is
  applied to the ``S`` basis directions at once (``vmap`` over the directions, each
  an ``(S, N)`` array with one row of ones), giving ``S`` columns of ``(S, N)``.
  ``df/dt`` is one more forward derivative, in ``t``.
- **Linear algebra.** The stage matrix is ``I - h gamma J`` (the W-form multiplied
  through by ``h gamma``, so a patient whose step is 0 gets ``U = 0`` and no
  division by zero). For ``S <= UNROLL_MAX`` it is factored by Gaussian elimination
  with partial pivoting written out entry by entry on ``(N,)`` rows (SoA: each
  operation is one vectorised loop over the patients); above that by LAPACK's
  batched LU (``jax.lax.linalg.lu`` on ``(N, S, S)``). One factorisation serves the
  method's 8 stage solves.
- **Step** (Hairer & Wanner II, sec. IV.7, transformed variables; see
  ``RosenbrockTableau``): ``(I - h gamma J) U_i = h gamma f(t + c_i h, y + sum_j
  a_ij U_j) + gamma sum_j C_ij U_j + h^2 gamma d_i df/dt``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._tableaus import RosenbrockTableau

UNROLL_MAX = 4  # unrolled SoA elimination up to this many states; LAPACK above


def jacobian(f, t, y, args):
    """``J[j][i]``: ``(S, S, N)`` with ``J[j, i] = df_i/dy_j`` (column-major: the
    ``j``-th entry is column ``j``), and ``df/dt`` ``(S, N)``, at ``(t, y)``."""
    S = y.shape[0]
    _, lin = jax.linearize(lambda Y: f(t, Y, args), y)
    basis = jnp.broadcast_to(jnp.eye(S, dtype=y.dtype)[:, :, None], (S,) + y.shape)
    cols = jax.vmap(lin)(basis)  # (S_j, S_i, N)
    ft = jax.jvp(lambda tt: f(tt, y, args), (t,), (jnp.ones_like(t),))[1]
    return cols, jnp.broadcast_to(ft, y.shape)


# -- unrolled Gaussian elimination on (N,) rows ----------------------------------------
def lu_factor_soa(A):
    """LU with partial pivoting of ``A[i][j]`` (lists of ``(N,)`` arrays), per patient.

    Returns ``(LU, piv, inv_diag)``: ``LU`` holds the unit-lower ``L`` below the
    diagonal and ``U`` on and above it, for ``P A = L U`` where ``P`` swaps row
    ``k`` with row ``piv[k]`` for ``k = 0, 1, ...`` in turn (LAPACK's convention);
    ``inv_diag[k] = 1 / U[k][k]``.
    """
    S = len(A)
    A = [list(r) for r in A]
    piv, inv = [], []
    for k in range(S):
        if k < S - 1:
            best = jnp.abs(A[k][k])
            p = jnp.full(best.shape, k, jnp.int32)
            for i in range(k + 1, S):
                a = jnp.abs(A[i][k])
                better = a > best
                best = jnp.where(better, a, best)
                p = jnp.where(better, i, p)
            row_k = A[k]
            new_k = list(row_k)
            for i in range(k + 1, S):
                take = p == i
                new_k = [jnp.where(take, A[i][j], new_k[j]) for j in range(S)]
                A[i] = [jnp.where(take, row_k[j], A[i][j]) for j in range(S)]
            A[k] = new_k
            piv.append(p)
        r = 1.0 / A[k][k]
        inv.append(r)
        for i in range(k + 1, S):
            lik = A[i][k] * r
            A[i][k] = lik
            for j in range(k + 1, S):
                A[i][j] = A[i][j] - lik * A[k][j]
    return A, piv, inv


def lu_solve_soa(fac, b):
    """Solve ``A x = b`` for ``b`` a list of ``S`` ``(N,)`` rows, with
    ``fac = lu_factor_soa(A)``."""
    LU, piv, inv = fac
    S = len(LU)
    b = list(b)
    for k, p in enumerate(piv):
        bk = b[k]
        new_k = bk
        for i in range(k + 1, S):
            take = p == i
            new_k = jnp.where(take, b[i], new_k)
            b[i] = jnp.where(take, bk, b[i])
        b[k] = new_k
    for i in range(1, S):  # L (unit diagonal)
        acc = b[i]
        for j in range(i):
            acc = acc - LU[i][j] * b[j]
        b[i] = acc
    for i in range(S - 1, -1, -1):  # U
        acc = b[i]
        for j in range(i + 1, S):
            acc = acc - LU[i][j] * b[j]
        b[i] = acc * inv[i]
    return b


class StageMatrix:
    """``I - h gamma J`` per patient, factored once per step; ``solve`` on ``(S, N)``."""

    def __init__(self, cols, hg):
        S = cols.shape[0]
        self.unrolled = S <= UNROLL_MAX
        if self.unrolled:
            one = jnp.ones_like(hg)
            A = [[(one if i == j else 0.0) - hg * cols[j, i] for j in range(S)] for i in range(S)]
            self.fac = lu_factor_soa(A)
        else:
            # (N, S, S) with M[n, i, j] = delta_ij - hg[n] J[n, i, j]
            Jn = jnp.transpose(cols, (2, 1, 0))
            M = jnp.eye(S, dtype=cols.dtype)[None] - hg[:, None, None] * Jn
            lu, _, perm = jax.lax.linalg.lu(M)
            self.fac = (lu, perm)

    def solve(self, b):
        if self.unrolled:
            return jnp.stack(lu_solve_soa(self.fac, list(b)), 0)
        lu, perm = self.fac
        bn = jnp.take_along_axis(b.T, perm, axis=-1)[..., None]  # (N, S, 1), P b
        x = jax.lax.linalg.triangular_solve(lu, bn, left_side=True, lower=True, unit_diagonal=True)
        x = jax.lax.linalg.triangular_solve(lu, x, left_side=True, lower=False)
        return x[..., 0].T


def step(tab: RosenbrockTableau, f, t, y, f0, h, args):
    """One Rosenbrock step for the whole batch (state-major ``(S, N)``).

    ``f0 = f(t, y)``; ``h``: ``(N,)`` (0 for patients not stepping). Returns
    ``(y1, err, dense)`` with ``dense`` the ``[K1, K2, K3]`` of the continuous
    extension (see :func:`dense`).
    """
    dtype = y.dtype
    cols, ft = jacobian(f, t, y, args)
    g = jnp.asarray(tab.gamma, dtype)
    hg = h * g
    W = StageMatrix(cols, hg)
    hc = hg[None, :]
    h2 = (h * hg)[None, :]
    U: list[jax.Array] = []
    for i in range(len(tab.c)):
        if i == 0:
            fi = f0
        else:
            yi = y
            for aij, Uj in zip(tab.a[i - 1], U):
                if aij != 0.0:
                    yi = yi + jnp.asarray(aij, dtype) * Uj
            fi = f(t + tab.c[i] * h, yi, args)
        rhs = hc * fi
        if i > 0:
            acc = None
            for cij, Uj in zip(tab.C[i - 1], U):
                if cij != 0.0:
                    term = jnp.asarray(cij * tab.gamma, dtype) * Uj
                    acc = term if acc is None else acc + term
            if acc is not None:
                rhs = rhs + acc
        if tab.d[i] != 0.0:
            rhs = rhs + jnp.asarray(tab.d[i], dtype) * h2 * ft
        U.append(W.solve(rhs))
    y1 = y
    for mi, Ui in zip(tab.m, U):
        if mi != 0.0:
            y1 = y1 + jnp.asarray(mi, dtype) * Ui
    err = None
    for ei, Ui in zip(tab.e, U):
        if ei != 0.0:
            term = jnp.asarray(ei, dtype) * Ui
            err = term if err is None else err + term
    Ks = []
    for row in tab.H:
        K = None
        for hi, Ui in zip(row, U):
            if hi != 0.0:
                term = jnp.asarray(hi, dtype) * Ui
                K = term if K is None else K + term
        Ks.append(K)
    return y1, err, Ks


def dense(theta, y0, y1, Ks):
    """``y(t + theta h) = (1 - theta) y0 + theta (y1 + (1 - theta) (K1 + theta (K2 +
    theta K3)))``; ``theta`` ``(N, K)``, step data ``(S, N)``; returns ``(S, N, K)``."""
    th = theta[None]
    y0, y1 = y0[..., None], y1[..., None]
    Ks = [k[..., None] for k in Ks]
    poly = Ks[-1]
    for k in reversed(Ks[:-1]):
        poly = k + th * poly
    return (1 - th) * y0 + th * (y1 + (1 - th) * poly)
