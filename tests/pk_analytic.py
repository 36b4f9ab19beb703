"""Independent references for linear PK: closed forms as sums of exponentials.

A linear mammillary model's unit-impulse response in the central compartment is
``h(t) = sum_i a_i exp(-l_i t)`` (macro-constants). Bolus, zero-order infusion and
first-order absorption responses follow analytically (Gabrielsson & Weiner 2016,
ch. 2-3; Gibaldi & Perrier, *Pharmacokinetics*, 2nd ed., 1982). Multiple doses are
sums of shifted single doses (superposition). Nothing here integrates an ODE.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def macro_constants(CL, V, Q=None, V2=None, Q3=None, V3=None):
    """``(a, l)``: concentration impulse response coefficients (1/L) and rates (1/h)."""
    k10 = CL / V
    if Q is None:
        return np.array([1.0 / V]), np.array([k10])
    k12, k21 = Q / V, Q / V2
    if Q3 is None:
        s = k10 + k12 + k21
        disc = np.sqrt(s * s - 4 * k10 * k21)
        al, be = (s + disc) / 2, (s - disc) / 2
        A = (al - k21) / (al - be) / V
        B = (k21 - be) / (al - be) / V
        return np.array([A, B]), np.array([al, be])
    # 3 compartments: roots of the characteristic cubic (Gibaldi & Perrier)
    k13, k31 = Q3 / V, Q3 / V3
    a0 = k10 * k21 * k31
    a1 = k10 * k31 + k21 * k31 + k21 * k13 + k10 * k21 + k31 * k12
    a2 = k10 + k12 + k13 + k21 + k31
    lam = np.sort(np.roots([1.0, -a2, a1, -a0]).real)[::-1]
    coef = []
    for i, li in enumerate(lam):
        others = [lam[j] for j in range(3) if j != i]
        coef.append((k21 - li) * (k31 - li) / ((others[0] - li) * (others[1] - li)) / V)
    return np.array(coef), lam


def bolus(t, D, a, l, t0=0.0):
    tt = np.asarray(t) - t0
    out = sum(ai * np.exp(-li * np.clip(tt, 0, None)) for ai, li in zip(a, l))
    return np.where(tt >= 0, D * out, 0.0)


def infusion(t, D, dur, a, l, t0=0.0):
    R = D / dur
    tt = np.asarray(t) - t0
    tin = np.clip(tt, 0, dur)
    out = sum(
        ai / li * (1 - np.exp(-li * tin)) * np.exp(-li * np.clip(tt - dur, 0, None))
        for ai, li in zip(a, l)
    )
    return np.where(tt >= 0, R * out, 0.0)


def oral(t, D, ka, a, l, F=1.0, t0=0.0):
    tt = np.clip(np.asarray(t) - t0, 0, None)
    out = sum(ai * ka / (ka - li) * (np.exp(-li * tt) - np.exp(-ka * tt)) for ai, li in zip(a, l))
    return F * D * out


def linear_system(model, p, doses, times):
    """Exact solution of a linear model by matrix exponentials (no ODE solver).

    ``doses``: list of ``(time, amount, cmt_index, duration)`` (duration 0 = bolus).
    Uses the augmented-matrix form for zero-order inputs (Van Loan 1978).
    """
    import jax.numpy as jnp

    names = model.state_names
    S = len(names)
    pj = {k: jnp.asarray(v, jnp.float64) for k, v in p.items()}

    def f(y):
        d = model.rhs(0.0, {s: y[i] for i, s in enumerate(names)}, pj, {})
        return jnp.stack([d[s] for s in names])

    import jax

    A = np.asarray(jax.jacfwd(f)(jnp.zeros(S)))
    events = sorted({0.0, *[d[0] for d in doses], *[d[0] + d[3] for d in doses if d[3] > 0]})
    out = np.zeros((len(times), S))
    y = np.zeros(S)
    t_prev = 0.0
    grid = sorted(set(events) | set(float(t) for t in times))

    def rate_at(t):
        r = np.zeros(S)
        for td, amt, c, dur in doses:
            if dur > 0 and td <= t < td + dur:
                r[c] += amt / dur
        return r

    results = {}
    for t in grid:
        # advance from t_prev to t with the rate active on [t_prev, t)
        h = t - t_prev
        if h > 0:
            r = rate_at(t_prev)
            M = np.zeros((S + 1, S + 1))
            M[:S, :S] = A * h
            M[:S, S] = r * h
            E = scipy.linalg.expm(M)
            y = E[:S, :S] @ y + E[:S, S]
        for td, amt, c, dur in doses:
            if dur == 0 and td == t:
                y = y.copy()
                y[c] += amt
        results[t] = y.copy()
        t_prev = t
    for i, t in enumerate(times):
        out[i] = results[float(t)]
    return out
