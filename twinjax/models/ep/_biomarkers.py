"""Action-potential biomarkers, reduced per beat on the fly or from a dense trace.

Definitions (all per beat, times in ms from the start of the pacing cycle):

- ``V_rest``: membrane potential at the stimulus onset (diastolic potential).
- ``V_peak``: maximum potential; ``dVdt_max``: maximum upstroke velocity (mV/ms).
- ``t_act``: activation time, the time of ``dVdt_max``.
- ``APD30/50/90``: time from ``t_act`` to the *last* downward crossing of
  ``V_peak - x% (V_peak - V_rest)``; NaN when the level is never crossed.
- ``triangulation`` = APD90 - APD30 (Hondeghem et al. 2001 Circulation 103:2004).
- ``EAD``: an early afterdepolarisation, a rise of more than ``ead_dv`` (5 mV) above
  the running minimum of V taken from ``t_act + ead_delay`` (100 ms, after the
  notch and dome), while that minimum is above ``-70 mV`` (the cell has not yet
  repolarised), as used in Passini et al. 2017 Front Physiol 8:668.
- ``RF``: repolarisation failure, V above ``-40 mV`` at the end of the cycle or at
  its start (the previous beat did not repolarise: with alternans the last beat can
  look normal), or APD90 never reached.
- ``DF``: depolarisation failure, ``V_peak`` below 0 mV: the stimulus did not elicit
  an action potential (no overshoot), as under near-complete INa and ICaL block. The
  APDs of such a beat measure the decay of the stimulus response, not an action
  potential; :func:`twinjax.models.ep.cell_population.drug_screen` sets its APD change to NaN.
- ``qNet``: integral over the beat of INaL + ICaL + Ito + IKr + IKs + IK1 (Dutta S,
  et al. 2017 Front Physiol 8:616), in C/F (= (A/F) * s).
- ``max_dv``: the CiPA beat-selection metric (FDA/CiPA@e881df6
  ``AP_simulation/AP_simulation.R``, ``max_dv``): the largest dV/dt (mV/ms) between
  the first downward crossings of 30 % and 90 % repolarisation after the peak (until
  the end of the beat if 90 % is not reached; from the peak to the end of the beat if
  30 % is not reached or the beat started above ``-40 mV``); NaN for a depolarisation
  failure (``V_peak`` below 0 mV) or a window of 1 ms or less. Negative for a normal
  repolarisation, positive with an EAD. Here dV/dt is taken at the step midpoints
  inside the window (the FDA code: at its 1-ms output points).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

LEVELS = (30, 40, 50, 90)
EAD_DELAY = 100.0  # ms after activation
EAD_DV = 5.0  # mV
EAD_FLOOR = -70.0  # mV
RF_LEVEL = -40.0  # mV
DF_LEVEL = 0.0  # mV: an action potential overshoots 0 mV
NAMES = (
    "APD90",
    "APD50",
    "APD40",
    "APD30",
    "triangulation",
    "V_rest",
    "V_peak",
    "dVdt_max",
    "t_act",
    "EAD",
    "RF",
    "DF",
    "qNet",
    "V_end",
    "max_dv",
)


def init_acc(V0):
    """Accumulators of one beat, from the potential at its start. ``V0``: (N,)."""
    z = jnp.zeros_like(V0)
    acc = dict(
        V_rest=V0, V_peak=V0, dVdt_max=z - jnp.inf, t_act=z, vmin_late=z + jnp.inf, ead=z, qnet=z
    )
    for x in LEVELS:
        acc[f"t{x}"] = z - 1.0
    # max_dv (CiPA beat selection): window flags and times, running maxima
    acc.update(
        t_peak=z, t_last=z, w30=z, w90=z, tw30=z, tw90=z, mdv_post=z - jnp.inf, mdv_win=z - jnp.inf
    )
    return acc


def update_acc(acc, active, t, dt, V0, V1, dvdt0, dvdt_mid, inet_mid):
    """Fold one step ``[t, t + dt]`` (per cell) into the accumulators.

    Arguments:
        acc: accumulators (dict of (N,)).
        active: (N,) bool, cells that took this step.
        t, dt: (N,) step start and size.
        V0, V1: (N,) potential at the start and end of the step.
        dvdt0, dvdt_mid: (N,) dV/dt at the start and midpoint of the step.
        inet_mid: (N,) qNet current at the midpoint (midpoint-rule integral).

    Returns:
        The updated accumulators.
    """
    a = dict(acc)
    a.update(_update_max_dv(acc, active, t, dt, V0, V1, dvdt_mid))
    better0 = active & (dvdt0 > a["dVdt_max"])
    a["t_act"] = jnp.where(better0, t, a["t_act"])
    a["dVdt_max"] = jnp.where(better0, dvdt0, a["dVdt_max"])
    betterm = active & (dvdt_mid > a["dVdt_max"])
    a["t_act"] = jnp.where(betterm, t + 0.5 * dt, a["t_act"])
    a["dVdt_max"] = jnp.where(betterm, dvdt_mid, a["dVdt_max"])
    a["V_peak"] = jnp.where(active, jnp.maximum(a["V_peak"], V1), a["V_peak"])
    amp = a["V_peak"] - a["V_rest"]
    fired = amp > 30.0
    t1 = t + dt
    for x in LEVELS:
        thr = a["V_peak"] - x / 100.0 * amp
        down = active & fired & (V0 > thr) & (V1 <= thr) & (t1 > a["t_act"])
        dv = jnp.where(V0 - V1 != 0, V0 - V1, 1.0)
        tc = t + dt * (V0 - thr) / dv
        a[f"t{x}"] = jnp.where(down, tc, a[f"t{x}"])
    late = active & (t1 > a["t_act"] + EAD_DELAY) & fired
    vmin = jnp.where(late, jnp.minimum(a["vmin_late"], V1), a["vmin_late"])
    ead = late & (V1 - vmin > EAD_DV) & (vmin > EAD_FLOOR)
    a["vmin_late"] = vmin
    a["ead"] = jnp.where(ead, 1.0, a["ead"])
    a["qnet"] = a["qnet"] + jnp.where(active, dt * inet_mid, 0.0) / 1000.0
    return a


def _update_max_dv(acc, active, t, dt, V0, V1, dvdt_mid):
    """The accumulators of ``max_dv`` after one step (see the module docstring)."""
    peak_up = active & (V1 > acc["V_peak"])  # a new maximum: the windows restart
    t1 = t + dt
    peak = jnp.maximum(acc["V_peak"], jnp.where(active, V1, acc["V_peak"]))
    amp = peak - acc["V_rest"]
    ok = active & ~peak_up & (peak >= DF_LEVEL) & (amp > 30.0)
    neg_inf = jnp.full_like(V1, -jnp.inf)
    a = {}
    a["t_peak"] = jnp.where(peak_up, t1, acc["t_peak"])
    a["t_last"] = jnp.where(active, t1, acc["t_last"])
    post = jnp.where(active, jnp.maximum(acc["mdv_post"], dvdt_mid), acc["mdv_post"])
    a["mdv_post"] = jnp.where(peak_up, neg_inf, post)
    in_win = ok & (acc["w30"] > 0) & (acc["w90"] == 0)  # the step started inside
    win = jnp.where(in_win, jnp.maximum(acc["mdv_win"], dvdt_mid), acc["mdv_win"])
    a["mdv_win"] = jnp.where(peak_up, neg_inf, win)
    dv = jnp.where(V0 - V1 != 0, V0 - V1, 1.0)
    flags = {}
    for x, key in ((30, "w30"), (90, "w90")):
        thr = peak - x / 100.0 * amp
        before = (acc["w30"] > 0) if x == 90 else True
        cross = ok & before & (acc[key] == 0) & (V1 <= thr)
        tc = t + dt * jnp.clip((V0 - thr) / dv, 0.0, 1.0)
        flags[key] = jnp.where(peak_up, 0.0, jnp.where(cross, 1.0, acc[key]))
        a[f"t{key}"] = jnp.where(cross, tc, acc[f"t{key}"])
    a.update(flags)
    return a


def _finish_max_dv(acc):
    fired = (acc["V_peak"] >= DF_LEVEL) & (acc["V_peak"] - acc["V_rest"] > 30.0)
    window = fired & (acc["V_rest"] < RF_LEVEL) & (acc["w30"] > 0)
    t_start = jnp.where(window, acc["tw30"], acc["t_peak"])
    t_end = jnp.where(window & (acc["w90"] > 0), acc["tw90"], acc["t_last"])
    value = jnp.where(window, acc["mdv_win"], acc["mdv_post"])
    valid = (acc["V_peak"] >= DF_LEVEL) & (t_end - t_start > 1.0) & jnp.isfinite(value)
    return jnp.where(valid, value, jnp.nan)


def finish(acc, V_end):
    """Biomarkers of the beat (dict of (N,)) from its accumulators and final V."""
    out = {}
    for x in LEVELS:
        tx = acc[f"t{x}"]
        out[f"APD{x}"] = jnp.where(tx >= 0, tx - acc["t_act"], jnp.nan)
    out["triangulation"] = out["APD90"] - out["APD30"]
    out["V_rest"] = acc["V_rest"]
    out["V_peak"] = acc["V_peak"]
    out["dVdt_max"] = acc["dVdt_max"]
    out["t_act"] = acc["t_act"]
    out["EAD"] = acc["ead"] > 0
    out["RF"] = (V_end > RF_LEVEL) | (acc["V_rest"] > RF_LEVEL) | jnp.isnan(out["APD90"])
    out["DF"] = acc["V_peak"] < DF_LEVEL
    out["qNet"] = acc["qnet"]
    out["V_end"] = V_end
    out["max_dv"] = _finish_max_dv(acc)
    return out


def from_trace(t, V, inet=None) -> dict:
    """The same biomarkers from one densely sampled beat (NumPy, for references).

    Arguments:
        t: (T,) times (ms) from the start of the cycle, increasing.
        V: (T,) membrane potential (mV).
        inet: optional (T,) qNet current (A/F), integrated by the trapezoid rule.

    Returns:
        ``{name: float}`` with the keys of :data:`NAMES` (APDs by linear
        interpolation of the last downward crossing).
    """
    t = np.asarray(t, float)
    V = np.asarray(V, float)
    dvdt = np.diff(V) / np.diff(t)
    i = int(np.argmax(dvdt))
    t_act = 0.5 * (t[i] + t[i + 1])
    rest, peak = V[0], V.max()
    out = dict(V_rest=rest, V_peak=peak, dVdt_max=float(dvdt[i]), t_act=t_act, V_end=V[-1])
    for x in LEVELS:
        thr = peak - x / 100.0 * (peak - rest)
        k = np.nonzero((V[:-1] > thr) & (V[1:] <= thr) & (t[1:] > t_act))[0]
        if len(k) == 0:
            out[f"APD{x}"] = np.nan
        else:
            k = k[-1]
            tc = t[k] + (t[k + 1] - t[k]) * (V[k] - thr) / (V[k] - V[k + 1])
            out[f"APD{x}"] = tc - t_act
    out["triangulation"] = out["APD90"] - out["APD30"]
    late = t > t_act + EAD_DELAY
    vmin = np.minimum.accumulate(np.where(late, V, np.inf))
    out["EAD"] = bool(np.any(late & (V - vmin > EAD_DV) & (vmin > EAD_FLOOR)))
    out["RF"] = bool(V[-1] > RF_LEVEL or rest > RF_LEVEL or np.isnan(out["APD90"]))
    out["DF"] = bool(peak < DF_LEVEL)
    out["qNet"] = float(np.trapezoid(inet, t) / 1000.0) if inet is not None else np.nan
    out["max_dv"] = _max_dv_trace(t, V, dvdt, rest, peak)
    return out


def _max_dv_trace(t, V, dvdt, rest, peak) -> float:
    """``max_dv`` of a dense trace (dV/dt of each sample interval, at its midpoint)."""
    if peak < DF_LEVEL:
        return float("nan")
    k = int(np.argmax(V))
    tm = 0.5 * (t[1:] + t[:-1])
    amp = peak - rest
    start, end = t[k], t[-1]

    def first_crossing(x):
        thr = peak - x / 100.0 * amp
        i = np.nonzero((np.arange(len(V) - 1) >= k) & (V[:-1] > thr) & (V[1:] <= thr))[0]
        if len(i) == 0:
            return None
        i = i[0]
        return t[i] + (t[i + 1] - t[i]) * (V[i] - thr) / (V[i] - V[i + 1])

    t30 = first_crossing(30) if amp > 30.0 and rest < RF_LEVEL else None
    if t30 is not None:
        start = t30
        t90 = first_crossing(90)
        if t90 is not None:
            end = t90
    if end - start <= 1.0:
        return float("nan")
    sel = (tm > start) & (tm < end)
    return float(dvdt[sel].max()) if sel.any() else float("nan")
