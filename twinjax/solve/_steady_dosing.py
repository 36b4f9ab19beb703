"""The dosing steady state (NONMEM SS=1 / SS=2 records), batched over patients.

The state at a steady-state record's time is the periodic steady state of the record
repeated every ``ii``: a fixed point of the *dosing-interval map* ``Phi`` (the state at
the record time to the state one interval later), found by Newton's method with the
periodic-steady-state solver of :mod:`twinjax.solve._periodic`
(``solve_fixed_point(method="newton", stop="step")``, the cumulative states masked
out). Its derivatives with respect to the parameters and the dose come from the
implicit function theorem. NONMEM's rules for a record's rate and duration
(:func:`infusion_rate_duration`) live here too; the event engine
(:mod:`twinjax.solve._engine`) uses both.
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
    EventTable,
)
from ..ode._model import dose_table
from ._periodic import solve_fixed_point
from ._status import Status

#: Newton iterations (dosing-interval maps and their Jacobians) per steady state
SS_MAX_ITERS = 40
#: relative size of Newton's last step above which a steady state is NOT_CONVERGED
SS_RTOL = {"float64": 1e-6, "float32": 1e-4}


def _safe(x):
    return jnp.where(x > 0, x, 1.0)


def infusion_rate_duration(kind, amt, rate, dur, R, D):
    """Rate and duration of each record (0 for a bolus), NONMEM's rules.

    ``amt`` is the amount given (``F * AMT``). RATE > 0: duration ``amt / RATE``; DUR:
    rate ``amt / DUR``; RATE -1 (INF_MRATE): rate ``R``, duration ``amt / R``; RATE -2
    (INF_MDUR): duration ``D``, rate ``amt / D``; a constant infusion: its RATE. Also
    returns where a record needs ``R`` or ``D`` and has it ``<= 0`` (not set).
    """
    mrate, mdur = kind == INF_MRATE, kind == INF_MDUR
    r = jnp.select(
        [(kind == INF_RATE) | (kind == INF_CONST), kind == INF_DUR, mrate, mdur],
        [rate, amt / _safe(dur), R, amt / _safe(D)],
        0.0,
    )
    d = jnp.select(
        [kind == INF_RATE, kind == INF_DUR, mrate, mdur],
        [amt / _safe(rate), dur, amt / _safe(R), D],
        0.0,
    )
    unset = (mrate & ~(R > 0)) | (mdur & ~(D > 0))
    return r, d, unset


def steady_state(model, solver, f, p, ev: EventTable, Y_init, n, dtype):
    """State at the time of each steady-state record, ``(N, J, S)``, a status ``(N, J)``
    and the number of implied earlier doses that still act ``(N, J)``.

    ``f``: the engine's vector field of ``model``. The state at the record time ``t``
    (before anything given at ``t``) of the periodic steady state of the record repeated
    every ``ii``, its doses arriving ``lag`` after their record times (NONMEM: "steady
    state is computed as if there were no ALAG, and then there is an advance to the
    appropriate point in the cycle"). One period ``[t, t + ii)`` has the arrival at
    phase ``a = lag mod ii``; infusions of duration ``D`` overlap when ``D > ii``, so
    ``floor`` counts of them run at once: the input is piecewise constant on at most
    three pieces. A constant infusion (INF_CONST) is the equilibrium under its rate.

    Solved by Newton's method on ``Phi(y) - y`` where ``Phi`` integrates one period
    (:func:`~twinjax.solve._periodic.solve_fixed_point`): per slot until Newton's last
    step is at most ``SS_RTOL`` of the largest non-cumulative state (quadratic
    convergence: usually 2 iterations for linear kinetics, a few for nonlinear ones) or
    ``SS_MAX_ITERS``; cumulative states are not iterated; a non-finite Newton step (a
    singular or overflowing Newton matrix) stops the slot as ``NONFINITE`` rather than
    continuing from a plain step (which can wander to an unphysical fixed point, e.g.
    negative amounts under Michaelis-Menten elimination with no real steady state).
    Derivatives with respect to parameters (F, lag included) and the dose use the
    implicit function theorem (forward-mode Jacobians of ``Phi``), so the result is
    differentiable in forward and reverse mode. Status: a failed integration keeps the
    integrator's code; a slot whose last step is not negligible (no periodic steady
    state, or a map so close to neutral that Newton has not converged) is
    ``Status.NOT_CONVERGED``, never returned as a steady state.
    """
    S = len(model.state_names)
    names = model.param_names
    dp = dose_table(model)
    J = ev.ss_rec.shape[-1]
    M = n * J
    idx = jnp.clip(ev.ss_rec, 0, None)  # (N, J)

    def slot(a):
        return jnp.take_along_axis(a, idx, axis=-1).reshape(M)

    def rep(x):
        return jnp.repeat(x, J, axis=0)

    def par(v):  # (N,), or (N, J) for a parameter that changes in time
        return v.reshape(M) if v.ndim == 2 else rep(jnp.broadcast_to(v, (n,)))

    theta0 = jnp.stack(
        [par(p[k]) for k in names]
        + [slot(ev.amt), slot(ev.rate), slot(ev.dur), slot(ev.ii), slot(ev.time)],
        -1,
    )
    dyn = np.asarray([not st.cumulative for st in model.states])
    dyn2 = dyn[:, None] & dyn[None, :]
    fname = [dp.get(s, (None,) * 4)[0] for s in model.state_names]
    lname = [dp.get(s, (None,) * 4)[1] for s in model.state_names]
    rname = [dp.get(s, (None,) * 4)[2] for s in model.state_names]
    dname = [dp.get(s, (None,) * 4)[3] for s in model.state_names]

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

    def per_cmt(q, which, default, c1h):
        cols = [q[x] if x else jnp.full((M,), default, dtype) for x in which]
        return jnp.sum(jnp.stack(cols, -1) * c1h, -1)

    def schedule(theta, aux):
        """Per slot: segment bounds (phases), input rate per segment, bolus, its phase."""
        c1h, kind, _ = aux
        q, d = unpack(theta)
        F = per_cmt(q, fname, 1.0, c1h)
        lag = per_cmt(q, lname, 0.0, c1h)
        R = per_cmt(q, rname, 0.0, c1h)
        D = per_cmt(q, dname, 0.0, c1h)
        const = kind == INF_CONST
        periodic_inf = (
            (kind == INF_RATE) | (kind == INF_DUR) | (kind == INF_MRATE) | (kind == INF_MDUR)
        )
        amt = F * d["amt"]
        rate, dur, _ = infusion_rate_duration(kind, amt, d["rate"], d["dur"], R, D)
        ii = jnp.where(const | ~(d["ii"] > 0), 1.0, d["ii"])
        a = jnp.where(const, 0.0, jnp.mod(lag, ii))
        e = jnp.mod(a + dur, ii)
        b1, b2 = jnp.minimum(a, e), jnp.maximum(a, e)
        bounds = [jnp.zeros_like(a), b1, b2, ii]
        rates = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            s = 0.5 * (lo + hi)
            count = jnp.floor((s - a) / ii) - jnp.floor((s - a - dur) / ii)
            rates.append(jnp.where(periodic_inf, count * rate, jnp.where(const, rate, 0.0)))
        bolus = jnp.where(kind == BOLUS, amt, 0.0)
        need = jnp.where(
            periodic_inf,
            jnp.ceil((lag + dur) / ii) - 1.0,
            jnp.where(kind == BOLUS, jnp.floor(lag / ii), 0.0),
        )
        return q, d["t"], bounds, rates, bolus, a, need

    # Every array is passed explicitly (no closure over traced values), as
    # custom_jvp requires under jit and reverse-mode differentiation.
    def phi(Y, theta, aux):
        c1h = aux[0]
        q, t0, bounds, rates, bolus, a, _ = schedule(theta, aux)

        def piece(carry, x):  # the bolus arrives at phase a, the start of a piece
            Y, left, st = carry
            lo, hi, rate = x
            at = a == lo
            Y = Y + jnp.where(at, left, 0.0)[:, None] * c1h
            left = jnp.where(at, 0.0, left)
            _, Y, s = solver.integrate(
                f, t0 + lo, t0 + hi, Y, None, (q, rate[:, None] * c1h), model, forward=True
            )
            return (Y, left, jnp.maximum(st, s).astype(jnp.int32)), None

        # the three pieces in one loop: one integrator in the program per use of phi
        # (the Newton iteration, its Jacobian, the implicit derivatives, the final
        # interval) instead of three, which is most of a steady-state program's size
        pieces = (jnp.stack(bounds[:-1]), jnp.stack(bounds[1:]), jnp.stack(rates))
        st0 = jnp.zeros((M,), jnp.int32)
        (Y, _, st), _ = jax.lax.scan(piece, (Y, bolus, st0), pieces)
        return Y, st

    def newton_matrix(Y, theta, aux):  # J - I on dynamic states, -I on cumulative ones
        def col(e):
            t = jnp.broadcast_to(e, Y.shape)
            return jax.jvp(lambda y: phi(y, theta, aux)[0], (Y,), (t,))[1]

        Jm = jnp.moveaxis(jax.vmap(col)(jnp.eye(S, dtype=dtype)), 0, -1)  # (M, S, S)
        eye = jnp.eye(S, dtype=dtype)
        return jnp.where(dyn2[None], Jm - eye[None], -eye[None])

    @jax.custom_jvp
    def implicit(theta, aux, Y):
        """``Y``, the fixed point of ``phi(., theta)``, with its tangent in ``theta``
        by the implicit function theorem (``Y`` itself carries no derivative)."""
        return Y

    @implicit.defjvp
    def implicit_jvp(primals, tangents):
        theta, aux, Y = primals
        dtheta = tangents[0]
        P = theta.shape[-1]

        def col(e):
            return jax.jvp(
                lambda th: phi(Y, th, aux)[0], (theta,), (jnp.broadcast_to(e, theta.shape),)
            )[1]

        Jt = jnp.moveaxis(jax.vmap(col)(jnp.eye(P, dtype=dtype)), 0, -1)  # (M, S, P)
        rhs = jnp.where(dyn[None, :], jnp.einsum("nsp,np->ns", Jt, dtheta), 0.0)
        dY = -jnp.linalg.solve(newton_matrix(Y, theta, aux), rhs[..., None])[..., 0]
        return Y, dY

    tol = SS_RTOL[jnp.dtype(dtype).name]
    kind = slot(ev.kind)
    aux = (
        jax.nn.one_hot(slot(ev.cmt), S, dtype=dtype),
        kind,
        jax.lax.stop_gradient(rep(Y_init)),
    )
    th = jax.lax.stop_gradient(theta0)
    fp = solve_fixed_point(
        lambda Y, active: phi(Y, th, aux),
        aux[2],
        method="newton",
        tol=tol,
        max_iter=SS_MAX_ITERS,
        stop="step",
        mask=dyn,
        fallback=False,
    )
    Ys = jax.lax.stop_gradient(fp.x)
    Y = implicit(theta0, aux, Ys)
    Y1, st = phi(Ys, th, aux)

    def dyn_max(a):
        return jnp.max(jnp.where(dyn[None, :], jnp.abs(a), 0.0), -1)

    # the steady state's own code: an integration that failed while iterating, else one
    # at the fixed point, else NOT_CONVERGED where Newton's last step is not negligible
    failed = (fp.status != Status.OK) & (fp.status != Status.NOT_CONVERGED)
    st = jnp.where(failed, fp.status, st)
    size = jnp.maximum(dyn_max(Y1), dyn_max(Ys))
    converged = fp.residual <= tol * size + 1e-30
    st = jnp.where((st == Status.OK) & ~converged, Status.NOT_CONVERGED, st)
    need = schedule(th, aux)[-1]
    on = (ev.ss_rec >= 0).reshape(M)
    st = jnp.where(on, st, 0)
    return Y.reshape(n, J, S), st.reshape(n, J), need.reshape(n, J)
