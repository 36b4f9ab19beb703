"""The event engine: integrate from event to event for a whole batch of patients.

Doses split the time axis into segments. Each step of one ``lax.scan`` applies the
event that opens a segment (bolus, infusion start/stop, reset, steady state) and
asks the solver to integrate the segment, saving at the requested times that fall
in it. A saved state is right-continuous: it includes every event at its time. The
state at a steady-state record comes from ``_steady_dosing.py`` (the
periodic-steady-state solver on the dosing-interval map). All arrays carry a leading
patient axis ``N``; event tables are padded so that patients with different regimens
run in one compiled program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..dosing._regimen import (
    BOLUS,
    INF_CONST,
    INF_DUR,
    INF_MDUR,
    INF_MRATE,
    INF_RATE,
    PAD_TIME,
    RESET,
    EventTable,
)
from ..ode._model import dose_table
from ._status import Status
from ._steady_dosing import infusion_rate_duration, steady_state

# engine event kinds
E_NOOP, E_BOLUS, E_START, E_STOP, E_RESET, E_SS, E_PARAM = 0, 1, 2, 3, 4, 5, 6


def vector_field(model):
    """The batched vector field ``f(t, Y, (p, rates))`` on stacked states ``Y[..., S]``.

    ``args`` may hold a third item ``(lo, hi)``: the model is then evaluated at ``t``
    clipped to ``[lo, hi]`` (a segment's interior, for discontinuity times).

    ``rates``: the infusion rate into each state, ``(..., S)``, added to its
    derivative; or None when nothing is infused (decided at trace time: the event
    table has no infusions), so that the step loop does not add a column of zeros to
    every state in every stage. The model's ``rhs`` then sees zeros as ``u``.
    """
    names = model.state_names

    def derivatives(t, y, args, shape):
        p, rates = args[:2]
        if len(args) > 2:  # a segment's open interval (see ``_run``'s ``breaks``)
            t = jnp.clip(t, *args[2])
        if rates is None:
            zero = jnp.zeros((), next(iter(y.values())).dtype) if y else 0.0
            d = model.rhs(t, y, p, {s: zero for s in names})
        else:
            u = {s: rates[..., i] for i, s in enumerate(names)}
            d = model.rhs(t, y, p, u)
        missing = [s for s in names if s not in d]
        if missing:
            raise ValueError(f"{type(model).__name__}.rhs returned no derivative for {missing}")
        if rates is None:
            return [jnp.broadcast_to(d[s], shape) for s in names]
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


def _next(a, b):
    """The next float after ``a`` towards ``b``, differentiable as ``a``."""
    a0, b0 = jax.lax.stop_gradient((a, b))
    return a + (jnp.nextafter(a0, b0) - a0)


def stack_state(model, y: dict, shape):
    return jnp.stack([jnp.broadcast_to(y[s], shape) for s in model.state_names], -1)


def _per_record(model, p, which: int, default: float, cmt, dtype):
    """``(N, K)`` bioavailability (which=0), lag (1), modelled rate (2) or modelled
    duration (3) of the compartment of every record (``default`` where it has none).
    A parameter is ``(N,)``, or ``(N, K)`` when it changes in time (its value at each
    record's time)."""
    dp = dose_table(model)
    out = jnp.full(cmt.shape, default, dtype)
    for i, s in enumerate(model.state_names):
        name = dp.get(s, (None,) * 4)[which]
        if name is not None:
            v = p[name]
            out = jnp.where(cmt == i, v[:, None] if v.ndim == 1 else v, out)
    return out


def _take(a, idx):
    return jnp.take_along_axis(a, idx, axis=-1)


def dose_records(model, p, ev: EventTable, n, dtype):
    """Effective (lagged) times, amounts, rates and durations of each record.

    NONMEM semantics: the amount given is ``F * AMT``; with RATE the duration is
    ``F * AMT / RATE``, with DUR the rate is ``F * AMT / DUR``; RATE -1 / -2 take the
    rate / duration from the compartment's R / D parameter (see
    :func:`infusion_rate_duration`); a lag time delays the arrival. A steady-state
    constant infusion (INF_CONST) starts at its record time and runs until a reset or
    an SS 1 record. Also returns, per patient, whether a record needs an R or D that
    is not set (``<= 0``). A parameter that changes in time is given as ``(N, K)``, its
    value at each record (NONMEM: the dose record's own F, ALAG, R, D).
    """
    F = _per_record(model, p, 0, 1.0, ev.cmt, dtype)
    lag = _per_record(model, p, 1, 0.0, ev.cmt, dtype)
    R = _per_record(model, p, 2, 0.0, ev.cmt, dtype)
    D = _per_record(model, p, 3, 0.0, ev.cmt, dtype)
    kind = ev.kind
    const = kind == INF_CONST
    modelled = (kind == INF_MRATE) | (kind == INF_MDUR)
    is_dose = (kind == BOLUS) | (kind == INF_RATE) | (kind == INF_DUR) | modelled
    is_inf = (kind == INF_RATE) | (kind == INF_DUR) | const | modelled
    t_eff = ev.time + jnp.where(is_dose, lag, 0.0)
    amt = F * ev.amt
    rate, dur, unset = infusion_rate_duration(kind, amt, ev.rate, ev.dur, R, D)
    dur = jnp.where(const, PAD_TIME, dur)
    return t_eff, amt, rate, dur, is_inf, jnp.any(unset, -1)


def _apply(kind, rec, Y, active, amt, cmt_onehot, Y_init, ss_data, dyn):
    """Apply one event per patient. kind, rec: (N,); for E_SS ``rec`` is the slot."""
    K = active.shape[-1]
    rec1h = jax.nn.one_hot(rec, K, dtype=bool)
    r = jnp.clip(rec, 0, K - 1)  # other kinds' indices (E_SS, E_PARAM) may exceed K
    a = jnp.take_along_axis(amt, r[:, None], -1)[:, 0]
    c1h = jnp.take_along_axis(cmt_onehot, r[:, None, None], 1)[:, 0, :]
    Y = Y + jnp.where(kind == E_BOLUS, a, 0.0)[:, None] * c1h
    active = active | (rec1h & (kind == E_START)[:, None])
    active = active & ~(rec1h & (kind == E_STOP)[:, None])
    reset = (kind == E_RESET)[:, None]
    Y = jnp.where(reset, Y_init, Y)
    active = jnp.where(reset, False, active)
    if ss_data is not None:
        Y_ss, mode, running = ss_data  # (N, J, S), (N, J), (N, J, K)
        J = mode.shape[-1]
        slot = jnp.clip(rec, 0, J - 1)
        y_ss = jnp.take_along_axis(Y_ss, slot[:, None, None], 1)[:, 0, :]
        m = jnp.take_along_axis(mode, slot[:, None], 1)[:, 0]
        run = jnp.take_along_axis(running, slot[:, None, None], 1)[:, 0, :]
        is_ss = kind == E_SS
        one = (is_ss & (m == 1))[:, None]
        two = (is_ss & (m == 2))[:, None]
        Y = jnp.where(one & dyn[None, :], y_ss, Y)
        Y = jnp.where(two & dyn[None, :], Y + y_ss - Y_init, Y)
        active = jnp.where(one, run, jnp.where(two, active | run, active))
    return Y, active


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


def run(model, solver, p, ev: EventTable, ts, y0=None, sched=None, pre=None, breaks=None):
    """Simulate a batch (in blocks when the solver asks for them); see ``_run``."""
    n = ev.kind.shape[0]
    block = solver.block_size(n, len(model.state_names))
    if block is None or block >= n:
        return _run(model, solver, p, ev, ts, y0, sched, pre, breaks)

    # save times, pre-dose flags and breaks: split with the patients when given per
    # patient, else ((1, .) or None) passed whole to every block
    extra = {"ts": ts, "pre": pre, "breaks": breaks}
    per = {k: a for k, a in extra.items() if a is not None and a.shape[0] != 1}
    whole = {k: a for k, a in extra.items() if k not in per}

    def one(p, ev, y0, sched, per, whole):
        x = {**whole, **per}
        return _run(model, solver, p, ev, x["ts"], y0, sched, x["pre"], x["breaks"])

    return blocked(one, n, block, (p, ev, y0, sched, per), (whole,))


def _run(model, solver, p, ev: EventTable, ts, y0=None, sched=None, pre=None, breaks=None):
    """Simulate a batch. ``p``: (N,) arrays; ``ev``: (N, K) table; ``ts``: (N, T), or
    (1, T) when every patient is saved at the same times (cheaper for solvers that
    look save times up inside their step loop).

    ``y0``: optional ``{state: (N,)}`` initial values replacing ``model.init`` (also
    what a reset returns to). ``sched``: a :class:`~twinjax.ode._piecewise.Schedule`
    of parameters that change in time (``p`` holds their values at time 0); the engine
    switches them at their change times, and dose records and steady states use their
    values at the record's time. ``pre``: boolean like ``ts``, True where a save at the
    time of events is taken before them (the left limit: an observation record placed
    before a dose record at the same time). ``breaks``: ``(N, J)`` or ``(1, J)``
    discontinuity times of the model's right-hand side in ``t``, or None: each is the
    end of a segment (no step crosses it, the solver restarts after it), and in every
    segment the model is evaluated at ``t`` clipped to the segment's interior (from
    the next float after its start to the float before its end), so that it sees the
    value that holds inside the segment on both sides of a switch, whether written
    with ``t < t_b`` or ``t <= t_b`` (diffrax's ``jump_ts`` does the same with
    ``prevbefore`` and ``nextafter``). Returns ``(ys (N, T, S), status (N,))``.
    """
    n, T = ev.kind.shape[0], ts.shape[-1]
    S = len(model.state_names)
    dtype = ts.dtype
    K = ev.kind.shape[-1]
    f = vector_field(model)

    p_rec = p
    if sched is not None:
        # dose records use the parameters at their own time; the implied earlier doses
        # of a steady-state record, those at the steady-state record's time
        hist_t = _take(ev.time, jnp.clip(ev.hist, 0, None))
        p_rec = {**p, **sched.at(jnp.where(ev.hist >= 0, hist_t, ev.time))}
    t_eff, amt, rate, dur, is_inf, unset = dose_records(model, p_rec, ev, n, dtype)
    kindA = jnp.select(
        [ev.kind == BOLUS, is_inf, ev.kind == RESET], [E_BOLUS, E_START, E_RESET], E_NOOP
    )
    rec_idx = jnp.broadcast_to(jnp.arange(K), (n, K))
    init = model.init(p)
    if y0:  # user-given initial states (e.g. a stored periodic steady state)
        init = {**init, **y0}
    Y_init = stack_state(model, init, (n,))
    ss_data = None
    status = jnp.zeros((n,), jnp.int32)
    e_time_parts, e_kind_parts, e_rec_parts, e_key_parts = [], [], [], []
    if ev.has_ss:
        J = ev.ss_rec.shape[-1]
        on = ev.ss_rec >= 0  # (N, J)
        sidx = jnp.clip(ev.ss_rec, 0, None)
        t_ss = jnp.where(on, _take(ev.time, sidx), PAD_TIME)  # (N, J)
        mode = jnp.where(on, _take(ev.ss, sidx), 0)
        p_ss = p if sched is None else {**p, **sched.at(_take(ev.time, sidx))}
        Y_ss, st, need = steady_state(model, solver, f, p_ss, ev, Y_init, n, dtype)
        status = jnp.maximum(status, jnp.max(st, -1))
        # implied earlier doses of each SS record: ignored before its time (the steady
        # state holds them); infusions running across it stay on; doses arriving after
        # it are given.
        mine = (ev.hist[:, None, :] == ev.ss_rec[:, :, None]) & on[..., None]  # (N, J, K)
        t_ss_b = t_ss[..., None]
        running = mine & is_inf[:, None, :]
        running = running & (t_eff[:, None, :] < t_ss_b) & ((t_eff + dur)[:, None, :] > t_ss_b)
        ss_data = (Y_ss, mode, running)
        have = jnp.sum(mine, -1)
        short = jnp.any(on & (need > have), -1)  # more implied doses act than compiled
        hist_slot = jnp.argmax(mine, axis=1)  # (N, K) slot of a history record
        own_t = jnp.where(ev.hist >= 0, _take(t_ss, hist_slot), -PAD_TIME)
        before = (ev.hist >= 0) & (t_eff < own_t)
        # an SS 1 record cancels later arrivals of earlier records (lagged doses)
        seq_ss = jnp.where(on, _take(ev.seq, sidx), -1)
        cancel = jnp.any(
            (mode == 1)[:, :, None]
            & (ev.seq[:, None, :] < seq_ss[:, :, None])
            & (t_eff[:, None, :] >= t_ss_b)
            & ~mine,
            axis=1,
        )
        kindA = jnp.where(before | cancel, E_NOOP, kindA)
        e_time_parts.append(t_ss)
        e_kind_parts.append(jnp.where(on, E_SS, E_NOOP))
        e_rec_parts.append(jnp.broadcast_to(jnp.arange(J), (n, J)))
        e_key_parts.append(seq_ss - 1)
    else:
        short = jnp.zeros((n,), bool)
    # a RATE -1 / -2 record whose R / D is not set (<= 0): flagged, never a wrong profile
    short = short | unset
    e_time_parts.append(t_eff)
    e_kind_parts.append(kindA)
    e_rec_parts.append(rec_idx)
    e_key_parts.append(ev.seq)
    if ev.has_infusion:
        e_time_parts.append(jnp.where(is_inf, t_eff + dur, PAD_TIME))
        e_kind_parts.append(jnp.where(is_inf, E_STOP, E_NOOP))
        e_rec_parts.append(rec_idx)
        e_key_parts.append(ev.seq + 4 * K + 4)
    if sched is not None:
        # parameter changes: at each change time the values that hold just after it
        u_time = sched.change_times()
        u_vals = sched.at(u_time, after=True)
        U = u_time.shape[-1]
        e_time_parts.append(u_time)
        e_kind_parts.append(jnp.full((n, U), E_PARAM))
        e_rec_parts.append(jnp.broadcast_to(jnp.arange(U), (n, U)))
        e_key_parts.append(jnp.full((n, U), -1))
    if breaks is not None:  # discontinuity times: segment ends that change nothing
        b = jnp.broadcast_to(breaks.astype(dtype), (n, breaks.shape[-1]))
        e_time_parts.append(b)
        e_kind_parts.append(jnp.full(b.shape, E_NOOP))
        e_rec_parts.append(jnp.zeros(b.shape, jnp.int32))
        e_key_parts.append(jnp.full(b.shape, -1))
    e_time = jnp.concatenate(e_time_parts, -1)
    e_kind = jnp.concatenate(e_kind_parts, -1)
    e_rec = jnp.concatenate(e_rec_parts, -1)
    e_key = jnp.concatenate(e_key_parts, -1)
    # by time; at equal times in record order (a reset, then a steady state, then its
    # dose), infusion stops last
    order = jnp.lexsort((e_key, e_time), axis=-1)
    e_time, e_kind, e_rec = (_take(a, order) for a in (e_time, e_kind, e_rec))

    t_start = jnp.zeros((n,), dtype)
    t_end = jnp.broadcast_to(jnp.max(ts, axis=-1), (n,))
    bounds = jnp.concatenate([t_start[:, None], e_time, t_end[:, None]], -1)
    bounds = jnp.clip(bounds, t_start[:, None], t_end[:, None])
    seg_of_save = jnp.sum(e_time[:, :, None] <= ts[:, None, :], axis=1)  # (N, T)
    if pre is not None:  # saves before the events at their time
        before = jnp.sum(e_time[:, :, None] < ts[:, None, :], axis=1)
        seg_of_save = jnp.where(pre, before, seg_of_save)
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
        Y, active, out, status, sc, pv = carry
        j, b0, b1, kind, rec = x
        Y, active = _apply(kind, rec, Y, active, amt, cmt1h, Y_init, ss_data, dyn)
        if sched is not None:
            change = kind == E_PARAM
            r = jnp.clip(rec, 0, U - 1)[:, None]
            pv = {
                k: jnp.where(change, jnp.take_along_axis(u_vals[k], r, -1)[:, 0], v)
                for k, v in pv.items()
            }
        # no infusion in the table (static): no rates, nothing added in the field
        rates = (
            jnp.einsum("nk,nks->ns", active.astype(dtype), rate_by_rec) if ev.has_infusion else None
        )
        lo = jnp.sum(seg_of_save < j, axis=-1).astype(jnp.int32)
        hi = jnp.sum(seg_of_save <= j, axis=-1).astype(jnp.int32)
        args = ({**p, **pv}, rates)
        if breaks is not None:  # the segment's interior, where the model is evaluated
            args = (*args, (_next(b0, b1), _next(b1, b0)))
        out, Y1, st, sc = solver.integrate_segment(f, b0, b1, Y, ts, out, lo, hi, args, model, sc)
        status = jnp.maximum(status, st)
        return (Y1, active, out, status, sc, pv), None

    out0 = jnp.zeros((n, T, S), dtype)
    active0 = jnp.zeros((n, K), bool)
    pv0 = {} if sched is None else {k: p[k] for k in sched.names}
    carry0 = (Y_init, active0, out0, status, solver.init_carry(n, dtype), pv0)
    (Y, _, out, status, _, _), _ = jax.lax.scan(step, carry0, xs)
    # a lag or F that makes more implied steady-state doses act than were compiled
    # (see dosing._regimen._history_count): refuse rather than return a wrong profile
    out = jnp.where(short[:, None, None], jnp.nan, out)
    nonfinite = ~jnp.all(jnp.isfinite(out), axis=(1, 2))
    status = jnp.where(nonfinite & (status == Status.OK), Status.NONFINITE, status)
    return out, status
