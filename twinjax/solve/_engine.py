"""The event engine: integrate from event to event for a whole batch of patients.

Doses split the time axis into segments. Each step of one ``lax.scan`` applies the
event that opens a segment (bolus, infusion start/stop, reset, steady state) and
asks the solver to integrate the segment, saving at the requested times that fall
in it. A saved state is right-continuous: it includes every event at its time.
All arrays carry a leading patient axis ``N``; event tables are padded so that
patients with different regimens run in one compiled program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..dosing._regimen import BOLUS, INF_DUR, INF_RATE, PAD_TIME, RESET, EventTable
from ._status import Status

# engine event kinds
E_NOOP, E_BOLUS, E_START, E_STOP, E_RESET, E_SS = 0, 1, 2, 3, 4, 5

SS_NEWTON_ITERS = 6


def vector_field(model):
    """The batched vector field ``f(t, Y, (p, rates))`` on stacked states ``Y[..., S]``."""
    names = model.state_names

    def derivatives(t, y, args, shape):
        p, rates = args
        u = {s: rates[..., i] for i, s in enumerate(names)}
        d = model.rhs(t, y, p, u)
        missing = [s for s in names if s not in d]
        if missing:
            raise ValueError(f"{type(model).__name__}.rhs returned no derivative for {missing}")
        return [jnp.broadcast_to(d[s], shape) + u[s] for s in names]

    def f(t, Y, args):
        y = {s: Y[..., i] for i, s in enumerate(names)}
        return jnp.stack(derivatives(t, y, args, Y.shape[:-1]), -1)

    def f_state_major(t, Y, args):
        """The same field on state-major ``Y[S, N]`` (one contiguous row per state)."""
        y = {s: Y[i] for i, s in enumerate(names)}
        return jnp.stack(derivatives(t, y, args, Y.shape[1:]), 0)

    f.state_major = f_state_major
    return f


def stack_state(model, y: dict, shape):
    return jnp.stack([jnp.broadcast_to(y[s], shape) for s in model.state_names], -1)


def _per_state(model, p, which: int, default: float, n, dtype):
    """``(N, S)`` bioavailability (which=0) or lag (which=1) of every state."""
    dp = model.dose_parameters()
    cols = []
    for s in model.state_names:
        name = dp.get(s, (None, None))[which]
        cols.append(p[name] if name is not None else jnp.full((n,), default, dtype))
    return jnp.stack(cols, -1)


def _take(a, idx):
    return jnp.take_along_axis(a, idx, axis=-1)


def _safe(x):
    return jnp.where(x > 0, x, 1.0)


def dose_records(model, p, ev: EventTable, n, dtype):
    """Effective (lagged) times, amounts, rates and durations of each record."""
    F = _take(_per_state(model, p, 0, 1.0, n, dtype), ev.cmt)
    lag = _take(_per_state(model, p, 1, 0.0, n, dtype), ev.cmt)
    kind = ev.kind
    is_dose = (kind == BOLUS) | (kind == INF_RATE) | (kind == INF_DUR)
    is_inf = (kind == INF_RATE) | (kind == INF_DUR)
    t_eff = ev.time + jnp.where(is_dose, lag, 0.0)
    amt = F * ev.amt
    rate = jnp.where(
        kind == INF_RATE, ev.rate, jnp.where(kind == INF_DUR, amt / _safe(ev.dur), 0.0)
    )
    dur = jnp.where(kind == INF_RATE, amt / _safe(ev.rate), jnp.where(kind == INF_DUR, ev.dur, 0.0))
    return t_eff, amt, rate, dur, is_inf


def _apply(kind, rec, Y, active, amt, cmt_onehot, Y_init, Y_ss, dyn):
    """Apply one event per patient. kind, rec: (N,)."""
    K = active.shape[-1]
    rec1h = jax.nn.one_hot(rec, K, dtype=bool)
    a = jnp.take_along_axis(amt, rec[:, None], -1)[:, 0]
    c1h = jnp.take_along_axis(cmt_onehot, rec[:, None, None], 1)[:, 0, :]
    Y = Y + jnp.where(kind == E_BOLUS, a, 0.0)[:, None] * c1h
    active = active | (rec1h & (kind == E_START)[:, None])
    active = active & ~(rec1h & (kind == E_STOP)[:, None])
    reset = (kind == E_RESET)[:, None]
    Y = jnp.where(reset, Y_init, Y)
    if Y_ss is not None:
        Y = jnp.where((kind == E_SS)[:, None] & dyn[None, :], Y_ss, Y)
    active = jnp.where(reset | (kind == E_SS)[:, None], False, active)
    return Y, active


def steady_state(model, solver, p, ev: EventTable, Y_init, n, dtype):
    """Pre-dose state at the periodic steady state of each patient's ss=1 record.

    Solved by Newton's method on ``Phi(y) - y`` where ``Phi`` gives one dose and
    integrates one interdose interval. Derivatives with respect to parameters and
    the dose use the implicit function theorem (forward-mode Jacobians of ``Phi``),
    so the result is differentiable in forward and reverse mode.
    """
    f = vector_field(model)
    S = len(model.state_names)
    names = model.param_names
    dp = model.dose_parameters()

    def unpack(theta):
        q = {k: theta[:, i] for i, k in enumerate(names)}
        j = len(names)
        d = dict(
            amt=theta[:, j],
            rate=theta[:, j + 1],
            dur=theta[:, j + 2],
            ii=theta[:, j + 3],
            t=theta[:, j + 4],
        )
        return q, d

    theta0 = jnp.stack(
        [p[k] for k in names] + [ev.ss_amt, ev.ss_rate, ev.ss_dur, ev.ss_ii, ev.ss_time], -1
    )
    dyn = np.asarray([not st.cumulative for st in model.states])
    dyn2 = dyn[:, None] & dyn[None, :]
    fname = [dp.get(s, (None, None))[0] for s in model.state_names]

    def newton_matrix(J):  # J - I on dynamic states, -I on cumulative ones
        eye = jnp.eye(S, dtype=dtype)
        return jnp.where(dyn2[None], J - eye[None], -eye[None])

    # Every array is passed explicitly (no closure over traced values), as
    # custom_jvp requires under jit and reverse-mode differentiation.
    def phi(Y, theta, aux):
        c1h, kind, _ = aux
        q, d = unpack(theta)
        Fs = jnp.stack([q[x] if x else jnp.ones((n,), dtype) for x in fname], -1)
        F = jnp.sum(Fs * c1h, -1)
        amt = F * d["amt"]
        rate = jnp.where(
            kind == INF_RATE, d["rate"], jnp.where(kind == INF_DUR, amt / _safe(d["dur"]), 0.0)
        )
        dur = jnp.where(
            kind == INF_RATE, amt / _safe(d["rate"]), jnp.where(kind == INF_DUR, d["dur"], 0.0)
        )
        bolus = jnp.where(kind == BOLUS, amt, 0.0)
        t0 = d["t"]
        Y = Y + bolus[:, None] * c1h
        _, Y, st1 = solver.integrate(
            f, t0, t0 + dur, Y, None, (q, rate[:, None] * c1h), model, forward=True
        )
        _, Y, st2 = solver.integrate(
            f, t0 + dur, t0 + d["ii"], Y, None, (q, jnp.zeros_like(Y)), model, forward=True
        )
        return Y, jnp.maximum(st1, st2)

    def jac_y(Y, theta, aux):
        def col(e):
            return jax.jvp(lambda y: phi(y, theta, aux)[0], (Y,), (jnp.broadcast_to(e, Y.shape),))[
                1
            ]

        return jnp.moveaxis(jax.vmap(col)(jnp.eye(S, dtype=dtype)), 0, -1)  # (N, S, S)

    @jax.custom_jvp
    def ss(theta, aux):
        def body(Y, _):
            r = jnp.where(dyn[None, :], phi(Y, theta, aux)[0] - Y, 0.0)
            A = newton_matrix(jac_y(Y, theta, aux))
            return Y - jnp.linalg.solve(A, r[..., None])[..., 0], None

        Y, _ = jax.lax.scan(body, aux[2], None, length=SS_NEWTON_ITERS)
        return Y

    @ss.defjvp
    def ss_jvp(primals, tangents):
        theta, aux = primals
        dtheta = tangents[0]
        Y = ss(theta, aux)
        P = theta.shape[-1]

        def col(e):
            return jax.jvp(
                lambda th: phi(Y, th, aux)[0], (theta,), (jnp.broadcast_to(e, theta.shape),)
            )[1]

        Jt = jnp.moveaxis(jax.vmap(col)(jnp.eye(P, dtype=dtype)), 0, -1)  # (N, S, P)
        rhs = jnp.where(dyn[None, :], jnp.einsum("nsp,np->ns", Jt, dtheta), 0.0)
        A = newton_matrix(jac_y(Y, theta, aux))
        return Y, -jnp.linalg.solve(A, rhs[..., None])[..., 0]

    aux = (jax.nn.one_hot(ev.ss_cmt, S, dtype=dtype), ev.ss_kind, jax.lax.stop_gradient(Y_init))
    Y = ss(theta0, aux)
    _, st = phi(jax.lax.stop_gradient(Y), jax.lax.stop_gradient(theta0), aux)
    return Y, st


def blocked(fn, n, block, batched, shared=()):
    """``fn(*batched_block, *shared)`` over blocks of at most ``block`` patients.

    ``batched``: pytrees whose leaves all have the leading patient axis ``n``;
    ``shared``: passed whole to every block. The last block is padded with copies
    of the last patient (balanced blocks keep the padding below one per block).
    Blocks run one after another (``lax.map``), so each block's loop works on
    arrays that stay in cache. Results are per patient, so they are bitwise
    independent of the blocking.
    """
    nb = -(-n // block)
    b = -(-n // nb)
    m = nb * b

    def split(a):
        if m > n:
            a = jnp.concatenate([a, jnp.broadcast_to(a[-1:], (m - n,) + a.shape[1:])])
        return a.reshape((nb, b) + a.shape[1:])

    res = jax.lax.map(lambda xs: fn(*xs, *shared), jax.tree.map(split, tuple(batched)))
    return jax.tree.map(lambda a: a.reshape((m,) + a.shape[2:])[:n], res)


def run(model, solver, p, ev: EventTable, ts, y0=None):
    """Simulate a batch (in blocks when the solver asks for them); see ``_run``."""
    n = ev.kind.shape[0]
    block = solver.block_size(n)
    if block is None or block >= n:
        return _run(model, solver, p, ev, ts, y0)
    if ts.shape[0] == 1:  # shared save times
        return blocked(
            lambda p, ev, y0, ts: _run(model, solver, p, ev, ts, y0), n, block, (p, ev, y0), (ts,)
        )
    return blocked(
        lambda p, ev, y0, ts: _run(model, solver, p, ev, ts, y0), n, block, (p, ev, y0, ts)
    )


def _run(model, solver, p, ev: EventTable, ts, y0=None):
    """Simulate a batch. ``p``: (N,) arrays; ``ev``: (N, K) table; ``ts``: (N, T), or
    (1, T) when every patient is saved at the same times (cheaper for solvers that
    look save times up inside their step loop).

    ``y0``: optional ``{state: (N,)}`` initial values replacing ``model.init`` (also
    what a reset returns to). Returns ``(ys (N, T, S), status (N,))``.
    """
    n, T = ev.kind.shape[0], ts.shape[-1]
    S = len(model.state_names)
    dtype = ts.dtype
    K = ev.kind.shape[-1]
    f = vector_field(model)

    t_eff, amt, rate, dur, is_inf = dose_records(model, p, ev, n, dtype)
    kindA = jnp.select(
        [ev.kind == BOLUS, is_inf, ev.kind == RESET], [E_BOLUS, E_START, E_RESET], E_NOOP
    )
    e_time_parts = [t_eff]
    e_kind_parts = [kindA]
    e_rec_parts = [jnp.broadcast_to(jnp.arange(K), (n, K))]
    if ev.has_infusion:
        e_time_parts.append(jnp.where(is_inf, t_eff + dur, PAD_TIME))
        e_kind_parts.append(jnp.where(is_inf, E_STOP, E_NOOP))
        e_rec_parts.append(e_rec_parts[0])
    init = model.init(p)
    if y0:  # user-given initial states (e.g. a stored periodic steady state)
        init = {**init, **y0}
    Y_init = stack_state(model, init, (n,))
    Y_ss = None
    status = jnp.zeros((n,), jnp.int32)
    if ev.has_ss:
        Y_ss, st = steady_state(model, solver, p, ev, Y_init, n, dtype)
        status = jnp.where(ev.ss_on == 1, jnp.maximum(status, st), status)
        lag = _take(_per_state(model, p, 1, 0.0, n, dtype), ev.ss_cmt[:, None])[:, 0]
        e_time_parts.insert(0, jnp.where(ev.ss_on == 1, ev.ss_time + lag, PAD_TIME)[:, None])
        e_kind_parts.insert(0, jnp.full((n, 1), E_SS))
        e_rec_parts.insert(0, jnp.zeros((n, 1), jnp.int32))
    e_time = jnp.concatenate(e_time_parts, -1)
    e_kind = jnp.concatenate(e_kind_parts, -1)
    e_rec = jnp.concatenate(e_rec_parts, -1)
    order = jnp.argsort(e_time, axis=-1, stable=True)
    e_time, e_kind, e_rec = (_take(a, order) for a in (e_time, e_kind, e_rec))

    t_start = jnp.zeros((n,), dtype)
    t_end = jnp.broadcast_to(jnp.max(ts, axis=-1), (n,))
    bounds = jnp.concatenate([t_start[:, None], e_time, t_end[:, None]], -1)
    bounds = jnp.clip(bounds, t_start[:, None], t_end[:, None])
    seg_of_save = jnp.sum(e_time[:, :, None] <= ts[:, None, :], axis=1)  # (N, T)
    n_seg = e_time.shape[-1] + 1
    xs = (
        jnp.arange(n_seg),
        bounds[:, :-1].T,
        bounds[:, 1:].T,
        jnp.concatenate([jnp.full((n, 1), E_NOOP), e_kind], -1).T,
        jnp.concatenate([jnp.zeros((n, 1), jnp.int32), e_rec], -1).T,
    )
    cmt1h = jax.nn.one_hot(ev.cmt, S, dtype=dtype)  # (N, K, S)
    dyn = np.asarray([not st.cumulative for st in model.states])
    rate_by_rec = rate[..., None] * cmt1h

    def step(carry, x):
        Y, active, out, status, sc = carry
        j, b0, b1, kind, rec = x
        Y, active = _apply(kind, rec, Y, active, amt, cmt1h, Y_init, Y_ss, dyn)
        rates = jnp.einsum("nk,nks->ns", active.astype(dtype), rate_by_rec)
        lo = jnp.sum(seg_of_save < j, axis=-1).astype(jnp.int32)
        hi = jnp.sum(seg_of_save <= j, axis=-1).astype(jnp.int32)
        out, Y1, st, sc = solver.integrate_segment(
            f, b0, b1, Y, ts, out, lo, hi, (p, rates), model, sc
        )
        status = jnp.maximum(status, st)
        return (Y1, active, out, status, sc), None

    out0 = jnp.zeros((n, T, S), dtype)
    active0 = jnp.zeros((n, K), bool)
    carry0 = (Y_init, active0, out0, status, solver.init_carry(n, dtype))
    (Y, _, out, status, _), _ = jax.lax.scan(step, carry0, xs)
    nonfinite = ~jnp.all(jnp.isfinite(out), axis=(1, 2))
    status = jnp.where(nonfinite & (status == Status.OK), Status.NONFINITE, status)
    return out, status
