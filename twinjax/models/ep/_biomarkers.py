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
  potential; :func:`twinjax.models.ep.population.drug_trial` sets its APD change to NaN.
- ``qNet``: integral over the beat of INaL + ICaL + Ito + IKr + IKs + IK1 (Dutta S,
  et al. 2017 Front Physiol 8:616), in C/F (= (A/F) * s).
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
)


def init_acc(V0):
    """Accumulators of one beat, from the potential at its start. ``V0``: (N,)."""
    z = jnp.zeros_like(V0)
    acc = dict(
        V_rest=V0, V_peak=V0, dVdt_max=z - jnp.inf, t_act=z, vmin_late=z + jnp.inf, ead=z, qnet=z
    )
    for x in LEVELS:
        acc[f"t{x}"] = z - 1.0
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
    return out
