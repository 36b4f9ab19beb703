"""Batched optimisers of the MAP objective (:mod:`._map`), every subject at once.

- :func:`lm_batched`: Levenberg-Marquardt / Fisher scoring. One forward-mode pass of
  the batched simulation gives every subject's prediction and Jacobian ``df/deta``
  (``k`` tangent directions for ``k`` random effects); each subject has its own
  damping, step acceptance and convergence flag, and a subject whose simulation fails
  or whose objective is not finite is flagged, never raised. On CPU the subjects run
  in blocks (:func:`lm_block_size`) and a block's last unconverged subjects finish in
  a compacted batch; with several devices each fits its own share.
- :func:`adam_batched` (optax Adam) and :func:`optx_batched` (``optx.least_squares``,
  vmapped over subjects): starting points for ``fit_individual(method=...)``, which
  always ends with :func:`lm_batched`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..solve._compaction import compacted_while, while_running
from ..solve._devices import per_device
from ..solve._engine import blocked
from ._data import as_obs
from ._terms import Spec, individual_params, obs_moments, obs_transform, posterior_terms, predict

# The objective is only as smooth as the ODE solver's adaptive step sequence: close to
# the mode its changes can fall below the solver's error and no step decreases it. A
# subject whose LM damping has then run away (or that reaches the iteration cap) still
# counts as converged when its Newton decrement G'H^-1G is below this: the decrement is
# twice the squared Mahalanobis distance to the mode, so 1e-3 puts the estimate within
# about 0.02 posterior SD of it (far below anything an interval or a forecast resolves).
NOISE_DECREMENT = 1e-3


def _solve(A, b):
    return jnp.linalg.solve(A, b[..., None])[..., 0]


LM_BLOCK = 256  # subjects per block of the batched LM on CPU (see ``lm_batched``)
LM_COMPACT = 4  # a block's unconverged subjects move to a batch this many times smaller
LM_COMPACT_MIN = 16  # smallest compacted batch


def lm_block_size(n: int, block: int | None = None) -> int | None:
    """Subjects per block for ``n`` subjects: ``LM_BLOCK`` on CPU, no blocking on
    accelerators (``block=0``) or when ``n`` fits in one block."""
    if block is None:
        block = LM_BLOCK if jax.default_backend() == "cpu" else 0
    if not block or n <= block:
        return None
    return int(block)


def _lm_core(spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv, max_iter, tol, compact):
    """The batched LM on one batch (see :func:`lm_batched`), with compaction."""
    k = eta0.shape[-1]
    eye = jnp.eye(k, dtype=eta0.dtype)
    O, G, H, f, st, ok = posterior_terms(spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv)

    def decrement(G, H):
        Hs = H + 1e-12 * eye[None]
        return jnp.einsum("nk,nk->n", G, _solve(Hs, G))

    dec = decrement(G, H)
    n = eta0.shape[0]
    conv = ok & (dec < tol)
    done = conv | ~ok
    lam = jnp.full((n,), 1e-4, eta0.dtype)
    niter = jnp.zeros((n,), jnp.int32)
    state = (eta0, O, G, H, f, st, ok, conv, done, lam, niter)
    data = (tv, ev, ts, y, mask)

    def make_loop(rows, min_active):
        tv, ev, ts, y, mask = data if rows is None else jax.tree.map(lambda a: a[rows], data)
        cond = while_running(lambda c: ~c[8], lambda c: c[11], min_active, max_iter)

        def body(c):
            eta, O, G, H, f, st, ok, conv, done, lam, niter, it = c
            dH = jnp.diagonal(H, axis1=-2, axis2=-1)
            A = H + lam[:, None, None] * (dH[:, :, None] * eye[None] + 1e-9 * eye[None])
            step = -_solve(A, G)
            active = ~done
            eta_c = jnp.where(active[:, None], eta + step, eta)
            O2, G2, H2, f2, st2, ok2 = posterior_terms(
                spec, tv, eta_c, ev, ts, y, mask, sigma, omega_inv
            )
            accept = active & ok2 & (O2 <= O)
            sel = lambda a, b: jnp.where(accept.reshape(accept.shape + (1,) * (a.ndim - 1)), a, b)
            eta, O, G, H, f, st = (
                sel(a, b) for a, b in zip((eta_c, O2, G2, H2, f2, st2), (eta, O, G, H, f, st))
            )
            lam = jnp.where(
                accept, jnp.maximum(lam * 0.2, 1e-12), jnp.where(active, lam * 10.0, lam)
            )
            dec = decrement(G, H)
            small_change = accept & (O - O2 >= 0) & (jnp.abs(c[1] - O) <= 1e-12 * (1 + jnp.abs(O)))
            conv = conv | (active & ((dec < tol) | small_change))
            stuck = active & (lam > 1e10)
            conv = conv | (stuck & (dec < jnp.maximum(1e3 * tol, NOISE_DECREMENT)))
            done = done | conv | stuck
            niter = niter + active.astype(jnp.int32)
            return (eta, O, G, H, f, st, ok, conv, done, lam, niter, it + 1)

        return cond, body, lambda c: c

    # Compaction: subjects converge after different numbers of iterations (median 5,
    # max 13 on the 1,000-subject benchmark) and every iteration simulates the whole
    # batch. Once no more than n / LM_COMPACT are unconverged, they are gathered into
    # a batch of that size (the spare slots repeat a converged subject, which stays
    # as it is) and finish there; each subject's iteration is its own, so the results
    # do not depend on it.
    m = n // LM_COMPACT if compact else 0
    if m < LM_COMPACT_MIN:
        m = 0
    it = jnp.zeros((), jnp.int32)
    *state, it = compacted_while(
        make_loop,
        (*state, it),
        m,
        lambda c: ~c[8],
        lambda c, rows: (*(a[rows] for a in c[:-1]), c[-1]),
        lambda c, sub, rows: (*(a.at[rows].set(b) for a, b in zip(c[:-1], sub[:-1])), sub[-1]),
    )
    eta, O, G, H, f, st, ok, conv, done, lam, niter = state
    ok = ok & jnp.isfinite(O)
    # at the iteration cap: a subject cycling within the solver's noise of its mode
    conv = conv | (~done & (decrement(G, H) < NOISE_DECREMENT))
    return dict(eta=eta, O=O, G=G, H=H, f=f, status=st, converged=conv & ok, ok=ok, n_iter=niter)


def _lm_blocked(spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv, max_iter, tol, block, compact):
    """:func:`_lm_core` block after block (``lax.map``) when ``block`` is set."""
    n = eta0.shape[0]

    def core(tv, eta0, ev, ts, y, mask):
        return _lm_core(spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv, max_iter, tol, compact)

    if block is None or n <= block:
        return core(tv, eta0, ev, ts, y, mask)
    return blocked(core, n, block, (tv, eta0, ev, ts, y, mask))


@eqx.filter_jit
def lm_batched(
    spec: Spec,
    tv,
    eta0,
    ev,
    ts,
    y,
    mask,
    sigma,
    omega_inv,
    max_iter,
    tol,
    *,
    block: int | None = None,
    compact: bool = True,
    devices: int = 1,
):
    """Batched Levenberg-Marquardt / Fisher scoring on the MAP objective.

    Every subject has its own damping, step acceptance and convergence flag; the
    batch is only the unit of vectorisation. On CPU the subjects run in blocks of
    ``LM_BLOCK`` (one after the other: a block's forward-mode simulation, 4x the state
    of a plain one, stays in cache, and a block stops when its own subjects have
    converged), and within a block the last unconverged subjects finish in a
    compacted batch (``compact``). With ``devices > 1`` the subjects are split over
    the first ``devices`` JAX devices by ``shard_map`` (each fits its own share; no
    communication); the batch size must then be a multiple of ``devices``.

    Arguments:
        spec: the problem.
        tv: ``{name: (N,)}`` typical values.
        eta0: ``(N, k)`` starting etas.
        ev, ts: event table and ``(N, T)`` evaluation times.
        y, mask: ``(N, T)`` observations and mask.
        sigma: residual SDs; omega_inv: ``(k, k)``.
        max_iter: iteration cap (a traced int); tol: Newton-decrement tolerance.
        block: subjects per block (default: :func:`lm_block_size`; 0: one batch).
        compact: finish a block's last subjects in a smaller batch.
        devices: number of devices to split the subjects over.

    Returns:
        A dict with ``eta, O, G, H, f, status, converged, ok, n_iter``.
    """
    n = eta0.shape[0]
    if devices <= 1:
        blk = lm_block_size(n, block)
        return _lm_blocked(
            spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv, max_iter, tol, blk, compact
        )
    if n % devices:
        raise ValueError(f"{n} subjects do not split over {devices} devices")
    blk = lm_block_size(n // devices, block)

    def local(tv, eta0, ev, ts, y, mask, sigma, omega_inv, max_iter):
        return _lm_blocked(
            spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv, max_iter, tol, blk, compact
        )

    return per_device(local, devices, (tv, eta0, ev, ts, y, mask), (sigma, omega_inv, max_iter))


@eqx.filter_jit
def adam_batched(spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv, n_steps, lr):
    import optax

    opt = optax.adam(lr)

    def grad(eta):
        O, G, H, f, st, ok = posterior_terms(spec, tv, eta, ev, ts, y, mask, sigma, omega_inv)
        return jnp.where(ok[:, None], G, 0.0)

    def step(c, _):
        eta, s = c
        u, s = opt.update(grad(eta), s, eta)
        return (optax.apply_updates(eta, u), s), None

    (eta, _), _ = jax.lax.scan(step, (eta0, opt.init(eta0)), None, length=n_steps)
    return eta


@eqx.filter_jit
def optx_batched(spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv, max_steps, rtol):
    """vmap over subjects of ``optx.least_squares`` with Levenberg-Marquardt.

    Residuals: ``[(y - m) / s ; L^-1 eta]`` with ``Omega = L L'``. With an SD that
    depends on the prediction the SD is held at its value at the current prediction
    (the log-SD term is not a square), so only additive/log error give the exact MAP.
    Censored records have no residual form: :func:`fit_individual` refuses them here.
    """
    import optimistix as optx

    L = jnp.linalg.cholesky(jnp.linalg.inv(omega_inv))
    obs = as_obs(y)

    def one(tv_i, eta_i, ev_i, ts_i, y_i, m_i):
        tv1 = jax.tree.map(lambda a: a[None], tv_i)
        ev1 = jax.tree.map(lambda a: a[None], ev_i)

        def resid(e, _):
            p = individual_params(spec, tv1, e[None])
            f, _st = predict(spec, p, ev1, ts_i[None], y_i.out[None])
            m, s = obs_moments(spec, f[0], sigma, y_i.out)
            s = jax.lax.stop_gradient(s)
            r = jnp.where(m_i, (obs_transform(spec, y_i.dv, y_i.out) - m) / s, 0.0)
            return jnp.concatenate([r, jax.scipy.linalg.solve_triangular(L, e, lower=True)])

        solver = optx.LevenbergMarquardt(rtol=rtol, atol=rtol)
        sol = optx.least_squares(
            resid, solver, eta_i, max_steps=max_steps, throw=False, options=dict(jac="fwd")
        )
        return sol.value

    return jax.vmap(one)(tv, eta0, ev, ts, obs, mask)
