"""Closed-loop 0-D circulation: four time-varying-elastance chambers, smooth valves,
systemic and pulmonary R-L-C arterial and venous compartments, and an optional
short-term arterial baroreflex.

The circulation is the 0-D part of Regazzoni et al. (2022), with its published
default parameters, in the units of the paper: volumes in mL, pressures in mmHg,
flows in mL/s, **time in seconds**. With ``V`` chamber volumes, ``p`` pressures,
``Q`` flows and ``C, R, L`` compliances, resistances and inertances:

```
p_X   = E_X(phi) (V_X - V0_X),   E_X = EB_X + EA_X e_X(phi)       X in LA, LV, RA, RV
dV_LA = Q_VEN_PUL - Q_MV          dV_LV = Q_MV - Q_AV
dV_RA = Q_VEN_SYS - Q_TV          dV_RV = Q_TV - Q_PV
C_AR_SYS  dp_AR_SYS/dt  = Q_AV - Q_AR_SYS
C_VEN_SYS dp_VEN_SYS/dt = Q_AR_SYS - Q_VEN_SYS
C_AR_PUL  dp_AR_PUL/dt  = Q_PV - Q_AR_PUL
C_VEN_PUL dp_VEN_PUL/dt = Q_AR_PUL - Q_VEN_PUL
L_AR_SYS  dQ_AR_SYS/dt  = p_AR_SYS - p_VEN_SYS - R_AR_SYS Q_AR_SYS
L_VEN_SYS dQ_VEN_SYS/dt = p_VEN_SYS - p_RA - R_VEN_SYS Q_VEN_SYS
L_AR_PUL  dQ_AR_PUL/dt  = p_AR_PUL - p_VEN_PUL - R_AR_PUL Q_AR_PUL
L_VEN_PUL dQ_VEN_PUL/dt = p_VEN_PUL - p_LA - R_VEN_PUL Q_VEN_PUL
```

**Activation by phase.** Regazzoni drives the activation ``e_X`` by ``t mod T_HB``.
Here it is driven by a phase state ``phi`` (in beats), ``dphi/dt = HR/60``, so
that the heart rate may change continuously (baroreflex, drugs) without a jump in
the activation. The contraction onset ``tC``, contraction ``TC`` and relaxation
``TR`` durations are therefore fractions of the beat: Regazzoni's seconds at his
heart rate of 60 bpm (``T_HB = 1 s``), so that at 60 bpm the model is his.

**Smooth valves.** Regazzoni's valve is ``Q = (p1 - p2) / R(p1, p2)`` with
``R = R_min`` when ``p1 > p2`` and ``R_max`` otherwise: a kink at ``p1 = p2``. We
use the smooth diode

```
Q = dp / R_max + (1/R_min - 1/R_max) * dp_valve * softplus(dp / dp_valve),   dp = p1 - p2
```

which tends to Regazzoni's valve as ``dp_valve -> 0`` (``dp_valve softplus(dp /
dp_valve) -> max(dp, 0)``), is infinitely differentiable, never regurgitates more
than ``dp / R_max``, and at ``dp = 0`` leaks forward ``ln 2 dp_valve / R_min``
(9 mL/s for 0.1 mmHg, briefly, while a valve opens or closes).

**Blood volume.** The model is closed: the total volume ``V_total`` (four chamber
volumes plus the stressed volumes ``C p`` of the four vascular compartments; their
unstressed volumes are constant and not represented, as in Regazzoni) is an exact
linear invariant of the equations, kept to round-off by every Runge-Kutta method.

**Per-beat outputs.** The cumulative states ``int_p_AR_SYS`` (``int p_AR_SYS dt``,
mmHg s) and ``int_Q_AV`` (``int Q_AV dt``, mL) give the mean arterial pressure and
the cardiac output of any beat exactly from their values at the beat's start and
end; :func:`beat_metrics` reduces the last complete beat of a saved trajectory;
:func:`to_periodic_steady_state` runs beat by beat (in the phase, exactly one beat
per step) until the state at beat start stops changing, then reduces one densely
saved beat; :func:`pv_loop` returns the pressure-volume loop.

**Baroreflex** (``Circulation(baroreflex=True)``). The short-term arterial
baroreflex of Ursino (1998), simplified: a first-order filter of arterial pressure
(``tau_p``), Ursino's sigmoidal carotid-sinus afferent firing ``f_as``, his
sympathetic ``f_es`` and vagal ``f_ev`` efferent firing, and first-order effectors
(time constants ``tau_R, tau_E, tau_Ts, tau_Tv``) on the systemic arterial
resistance, the ventricular active elastances and the heart period:

```
R_AR_SYS,eff = R_AR_SYS (1 + x_R),  EA_V,eff = EA_V (1 + x_E),  T = 60/HR (1 + x_Ts + x_Tv)
dx_R/dt  = (G_R  [s(f_es) - s_n] - x_R)  / tau_R        s(f) = ln(f - f_es_min + 1)
dx_E/dt  = (G_E  [s(f_es) - s_n] - x_E)  / tau_E
dx_Ts/dt = (G_Ts [s(f_es) - s_n] - x_Ts) / tau_Ts
dx_Tv/dt = (G_Tv [f_ev - f_ev_n] - x_Tv) / tau_Tv
```

The gains are Ursino's absolute gains divided by his baseline values of the
effected quantity (fractional gains), and the effects are measured from the set
point ``P_n`` (``s_n, f_ev_n``: the firing at ``P_tilde = P_n``), so that the reflex
is neutral at rest. Ursino's pure delays (0.2-2 s) are omitted (an ODE has none).

References:
    - Regazzoni F, Salvador M, Africa PC, Fedele M, Dede' L, Quarteroni A. A cardiac
      electromechanical model coupled with a lumped-parameter model for closed-loop
      blood circulation. J Comput Phys 457:111083, 2022 (arXiv:2011.15040).
    - Ursino M. Interaction between carotid baroregulation and the pulsating heart: a
      mathematical model. Am J Physiol 275:H1733-H1747, 1998.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..model import Model, Param, State
from ..model._param import fraction, positive, real
from ..solve._diffrax import Diffrax
from ..solve._engine import stack_state, vector_field
from ..solve._periodic import first_failure, solve_fixed_point

REGAZZONI = "Regazzoni et al. 2022, 0-D circulation defaults"
URSINO = "Ursino 1998, Table 1"
URSINO_FRAC = "Ursino 1998, gain / baseline value (fractional)"

CHAMBERS = ("LA", "LV", "RA", "RV")
VALVES = (("MV", "LA", "LV"), ("AV", "LV", "AR_SYS"), ("TV", "RA", "RV"), ("PV", "RV", "AR_PUL"))

# (EA, EB, V0, tC, TC, TR): elastances mmHg/mL, V0 mL, timings in beats (s at 60 bpm)
_CHAMBER_DEFAULTS = {
    "LA": (0.07, 0.09, 4.0, 0.80, 0.17, 0.17),
    "LV": (2.75, 0.08, 5.0, 0.00, 0.34, 0.17),
    "RA": (0.06, 0.07, 4.0, 0.80, 0.17, 0.17),
    "RV": (0.55, 0.05, 10.0, 0.00, 0.34, 0.17),
}
# (R mmHg s/mL, C mL/mmHg, L mmHg s^2/mL)
_VESSEL_DEFAULTS = {
    "AR_SYS": (0.8, 1.2, 5e-3),
    "VEN_SYS": (0.26, 60.0, 5e-4),
    "AR_PUL": (0.1625, 10.0, 5e-4),
    "VEN_PUL": (0.1625, 16.0, 5e-4),
}
# Regazzoni's initial state (mL, mmHg, mL/s)
INITIAL = {
    "V_LA": 65.0,
    "V_LV": 120.0,
    "V_RA": 65.0,
    "V_RV": 145.0,
    "p_AR_SYS": 80.0,
    "p_VEN_SYS": 30.0,
    "p_AR_PUL": 35.0,
    "p_VEN_PUL": 24.0,
    "Q_AR_SYS": 0.0,
    "Q_VEN_SYS": 0.0,
    "Q_AR_PUL": 0.0,
    "Q_VEN_PUL": 0.0,
}
VESSELS = tuple(_VESSEL_DEFAULTS)

# Ursino 1998 afferent / efferent constants
_F_AS_MIN, _F_AS_MAX, _K_A = 2.52, 47.78, 11.758  # spikes/s, spikes/s, mmHg
_F_ES_INF, _F_ES_0, _K_ES = 2.10, 16.11, 0.0675  # spikes/s, spikes/s, s
_F_EV_0, _F_EV_INF, _F_AS_0, _K_EV = 3.2, 6.3, 25.0, 7.06  # spikes/s
_F_ES_MIN = 2.66  # spikes/s


def activation(phi, tC, TC, TR):
    """Regazzoni's cosine activation ``e(phi)`` in [0, 1], periodic with period 1.

    Arguments:
        phi: the phase (beats).
        tC: contraction onset, TC: contraction duration, TR: relaxation duration,
            all in fractions of a beat (``TC + TR <= 1``).

    Returns:
        ``1/2 (1 - cos(pi s / TC))`` for ``0 <= s < TC``, ``1/2 (1 + cos(pi (s - TC)
        / TR))`` for ``TC <= s < TC + TR``, 0 otherwise, with ``s = (phi - tC) mod 1``.
        It is continuously differentiable in ``phi``.
    """
    s = jnp.mod(phi - tC, 1.0)
    rise = 0.5 * (1.0 - jnp.cos(math.pi * s / TC))
    fall = 0.5 * (1.0 + jnp.cos(math.pi * (s - TC) / TR))
    return jnp.where(s < TC, rise, jnp.where(s < TC + TR, fall, 0.0 * s))


def valve_flow(p1, p2, R_min, R_max, dp_valve):
    """Smooth diode: flow through a valve from ``p1`` to ``p2`` (mL/s).

    ``Q = dp / R_max + (1/R_min - 1/R_max) dp_valve softplus(dp / dp_valve)``; the
    limit ``dp_valve -> 0`` is Regazzoni's switch between ``R_min`` and ``R_max``.
    """
    dp = p1 - p2
    return dp / R_max + (1.0 / R_min - 1.0 / R_max) * dp_valve * jax.nn.softplus(dp / dp_valve)


def _afferent(P, P_n):
    """Ursino's carotid-sinus afferent firing (spikes/s) at filtered pressure P."""
    z = jnp.exp((P - P_n) / _K_A)
    return (_F_AS_MIN + _F_AS_MAX * z) / (1.0 + z)


def _sympathetic(f_as):
    return _F_ES_INF + (_F_ES_0 - _F_ES_INF) * jnp.exp(-_K_ES * f_as)


def _vagal(f_as):
    z = jnp.exp((f_as - _F_AS_0) / _K_EV)
    return (_F_EV_0 + _F_EV_INF * z) / (1.0 + z)


def _s_sym(f_es):
    return jnp.log(jnp.maximum(f_es - _F_ES_MIN, 0.0) + 1.0)


def _chamber_params() -> list[Param]:
    q = []
    for X in CHAMBERS:
        EA, EB, V0, tC, TC, TR = _CHAMBER_DEFAULTS[X]
        src = f"{REGAZZONI} ({X})"
        q.append(positive(f"EA_{X}", EA, "mmHg/mL", upper=50.0, source=src,
                          doc=f"{X} active (maximal minus passive) elastance"))  # fmt: skip
        q.append(positive(f"EB_{X}", EB, "mmHg/mL", upper=10.0, source=src,
                          doc=f"{X} passive elastance"))  # fmt: skip
        q.append(real(f"V0_{X}", V0, "mL", lower=0.0, upper=200.0, source=src,
                      doc=f"{X} rest (zero-pressure) volume"))  # fmt: skip
        q.append(fraction(f"tC_{X}", tC, upper=1.0, unit="beat", source=src + "; s at 60 bpm",
                          doc=f"{X} contraction onset (fraction of the beat)"))  # fmt: skip
        q.append(fraction(f"TC_{X}", TC, lower=0.01, upper=0.6, unit="beat",
                          source=src + "; s at 60 bpm",
                          doc=f"{X} contraction duration (fraction of the beat)"))  # fmt: skip
        q.append(fraction(f"TR_{X}", TR, lower=0.01, upper=0.6, unit="beat",
                          source=src + "; s at 60 bpm",
                          doc=f"{X} relaxation duration (fraction of the beat)"))  # fmt: skip
    return q


def _vessel_params() -> list[Param]:
    q = []
    for v in VESSELS:
        R, C, L = _VESSEL_DEFAULTS[v]
        where = v.replace("_", " ").lower()
        q.append(positive(f"R_{v}", R, "mmHg s/mL", upper=100.0, source=REGAZZONI,
                          doc=f"{where} resistance"))  # fmt: skip
        q.append(positive(f"C_{v}", C, "mL/mmHg", upper=1e4, source=REGAZZONI,
                          doc=f"{where} compliance"))  # fmt: skip
        q.append(positive(f"L_{v}", L, "mmHg s^2/mL", upper=1.0, source=REGAZZONI,
                          doc=f"{where} inertance"))  # fmt: skip
    return q


class Circulation(Model):
    """Closed-loop 0-D circulation of Regazzoni et al. (2022), optional baroreflex.

    Arguments:
        baroreflex: add Ursino's (1998) short-term arterial baroreflex acting on the
            heart period, the ventricular active elastances and the systemic arterial
            resistance (structural: it adds five states and their parameters).

    States: ``V_LA, V_LV, V_RA, V_RV`` (mL), ``p_AR_SYS, p_VEN_SYS, p_AR_PUL,
    p_VEN_PUL`` (mmHg), ``Q_AR_SYS, Q_VEN_SYS, Q_AR_PUL, Q_VEN_PUL`` (mL/s), the phase
    ``phi`` (beats) and the cumulative integrals ``int_p_AR_SYS`` (mmHg s) and
    ``int_Q_AV`` (mL); with the baroreflex also ``P_tilde`` (mmHg) and the effector
    states ``x_R, x_E, x_Ts, x_Tv`` (fractional changes).

    Outputs: chamber pressures ``p_LA, p_LV, p_RA, p_RV``, valve flows ``Q_MV, Q_AV,
    Q_TV, Q_PV``, the arterial pressure ``p_AR`` (= ``p_AR_SYS``), the effective heart
    rate ``HR_eff`` (bpm), the effective systemic resistance ``R_sys_eff`` and the
    total blood volume ``V_total`` (mL).

    Time is in seconds. The model is autonomous (it does not read ``t``).
    """

    baroreflex: bool = False

    time_unit = "s"
    reference = (
        "Regazzoni et al. 2022, J Comput Phys 457:111083 (0-D circulation); "
        "Ursino 1998, Am J Physiol 275:H1733 (baroreflex)"
    )

    @property
    def states(self) -> tuple[State, ...]:  # type: ignore[override]
        s = [State(f"V_{X}", "mL", f"{X} volume") for X in CHAMBERS]
        s += [State(f"p_{v}", "mmHg", f"{v} pressure") for v in VESSELS]
        s += [State(f"Q_{v}", "mL/s", f"{v} flow") for v in VESSELS]
        s.append(State("phi", "beat", "cardiac phase (beats since start)", cumulative=True))
        s.append(State("int_p_AR_SYS", "mmHg s", "integral of p_AR_SYS", cumulative=True))
        s.append(State("int_Q_AV", "mL", "integral of the aortic-valve flow", cumulative=True))
        if self.baroreflex:
            s.append(State("P_tilde", "mmHg", "filtered arterial pressure (baroreceptor)"))
            s += [
                State("x_R", "1", "baroreflex fractional change of R_AR_SYS"),
                State("x_E", "1", "baroreflex fractional change of EA_LV, EA_RV"),
                State("x_Ts", "1", "sympathetic fractional change of the heart period"),
                State("x_Tv", "1", "vagal fractional change of the heart period"),
            ]
        return tuple(s)

    @property
    def params(self) -> tuple[Param, ...]:  # type: ignore[override]
        q = [
            positive(
                "HR",
                60.0,
                "1/min",
                lower=20.0,
                upper=250.0,
                source=REGAZZONI + " (T_HB = 1 s, the timings are given at it)",
                doc="heart rate (before the baroreflex)",
            ),  # fmt: skip
            *_vessel_params(),
            *_chamber_params(),
            positive(
                "R_min",
                0.0075,
                "mmHg s/mL",
                upper=1.0,
                source=REGAZZONI,
                doc="open-valve resistance",
            ),  # fmt: skip
            positive(
                "R_max",
                75006.2,
                "mmHg s/mL",
                lower=1.0,
                upper=1e8,
                source=REGAZZONI,
                doc="closed-valve resistance",
            ),  # fmt: skip
            positive(
                "dp_valve",
                0.1,
                "mmHg",
                upper=10.0,
                source="this implementation",
                doc="pressure scale of the smooth valve switch",
            ),  # fmt: skip
        ]
        if self.baroreflex:
            q += [
                positive(
                    "P_n",
                    99.5,
                    "mmHg",
                    upper=300.0,
                    source="resting MAP of this model (Ursino 1998: 92 mmHg for his)",
                    doc="baroreflex set point (neutral filtered pressure)",
                ),  # fmt: skip
                positive(
                    "tau_p",
                    2.076,
                    "s",
                    upper=100.0,
                    source=URSINO + " (tau_p)",
                    doc="baroreceptor pressure filter time constant",
                ),  # fmt: skip
                real(
                    "G_R",
                    0.28,
                    "1",
                    lower=-5.0,
                    upper=5.0,
                    source=URSINO_FRAC + " (0.695 / 2.49, splanchnic R)",
                    doc="fractional gain on R_AR_SYS",
                ),  # fmt: skip
                positive(
                    "tau_R",
                    6.0,
                    "s",
                    upper=100.0,
                    source=URSINO,
                    doc="resistance effector time constant",
                ),  # fmt: skip
                real(
                    "G_E",
                    0.2,
                    "1",
                    lower=-5.0,
                    upper=5.0,
                    source=URSINO_FRAC + " (0.475 / 2.392, Emax,lv)",
                    doc="fractional gain on EA_LV and EA_RV",
                ),  # fmt: skip
                positive(
                    "tau_E",
                    8.0,
                    "s",
                    upper=100.0,
                    source=URSINO,
                    doc="contractility effector time constant",
                ),  # fmt: skip
                real(
                    "G_Ts",
                    -0.224,
                    "1",
                    lower=-5.0,
                    upper=5.0,
                    source=URSINO_FRAC + " (-0.13 s / T0 0.58 s)",
                    doc="sympathetic fractional gain on the heart period",
                ),  # fmt: skip
                positive(
                    "tau_Ts",
                    2.0,
                    "s",
                    upper=100.0,
                    source=URSINO,
                    doc="sympathetic heart-period time constant",
                ),  # fmt: skip
                real(
                    "G_Tv",
                    0.155,
                    "s/spike",
                    lower=-5.0,
                    upper=5.0,
                    source=URSINO_FRAC + " (0.09 s/(spikes/s) / T0 0.58 s)",
                    doc="vagal fractional gain on the heart period",
                ),  # fmt: skip
                positive(
                    "tau_Tv",
                    1.5,
                    "s",
                    upper=100.0,
                    source=URSINO,
                    doc="vagal heart-period time constant",
                ),  # fmt: skip
            ]
        return tuple(q)

    # -- the equations ------------------------------------------------------------
    def _effective(self, y, p):
        """Heart rate (bpm), systemic resistance and ventricular EA after the reflex."""
        HR, R_sys = p["HR"], p["R_AR_SYS"]
        EA_LV, EA_RV = p["EA_LV"], p["EA_RV"]
        if self.baroreflex:
            HR = HR / (1.0 + y["x_Ts"] + y["x_Tv"])
            R_sys = R_sys * (1.0 + y["x_R"])
            EA_LV = EA_LV * (1.0 + y["x_E"])
            EA_RV = EA_RV * (1.0 + y["x_E"])
        return HR, R_sys, {"LV": EA_LV, "RV": EA_RV, "LA": p["EA_LA"], "RA": p["EA_RA"]}

    def _pressures(self, y, p, EA):
        out = {}
        for X in CHAMBERS:
            e = activation(y["phi"], p[f"tC_{X}"], p[f"TC_{X}"], p[f"TR_{X}"])
            E = p[f"EB_{X}"] + EA[X] * e
            out[f"p_{X}"] = E * (y[f"V_{X}"] - p[f"V0_{X}"])
        for v in ("AR_SYS", "AR_PUL"):
            out[f"p_{v}"] = y[f"p_{v}"]
        return out

    def _flows(self, pr, p):
        return {
            f"Q_{name}": valve_flow(
                pr[f"p_{a}"], pr[f"p_{b}"], p["R_min"], p["R_max"], p["dp_valve"]
            )  # fmt: skip
            for name, a, b in VALVES
        }

    def rhs(self, t, y, p, u):
        HR, R_sys, EA = self._effective(y, p)
        pr = self._pressures(y, p, EA)
        Q = self._flows(pr, p)
        p_LA, p_RA = pr["p_LA"], pr["p_RA"]
        d = {
            "V_LA": y["Q_VEN_PUL"] - Q["Q_MV"],
            "V_LV": Q["Q_MV"] - Q["Q_AV"],
            "V_RA": y["Q_VEN_SYS"] - Q["Q_TV"],
            "V_RV": Q["Q_TV"] - Q["Q_PV"],
            "p_AR_SYS": (Q["Q_AV"] - y["Q_AR_SYS"]) / p["C_AR_SYS"],
            "p_VEN_SYS": (y["Q_AR_SYS"] - y["Q_VEN_SYS"]) / p["C_VEN_SYS"],
            "p_AR_PUL": (Q["Q_PV"] - y["Q_AR_PUL"]) / p["C_AR_PUL"],
            "p_VEN_PUL": (y["Q_AR_PUL"] - y["Q_VEN_PUL"]) / p["C_VEN_PUL"],
            "Q_AR_SYS": (y["p_AR_SYS"] - y["p_VEN_SYS"] - R_sys * y["Q_AR_SYS"]) / p["L_AR_SYS"],
            "Q_VEN_SYS": (y["p_VEN_SYS"] - p_RA - p["R_VEN_SYS"] * y["Q_VEN_SYS"]) / p["L_VEN_SYS"],
            "Q_AR_PUL": (y["p_AR_PUL"] - y["p_VEN_PUL"] - p["R_AR_PUL"] * y["Q_AR_PUL"])
            / p["L_AR_PUL"],
            "Q_VEN_PUL": (y["p_VEN_PUL"] - p_LA - p["R_VEN_PUL"] * y["Q_VEN_PUL"]) / p["L_VEN_PUL"],
            "phi": HR / 60.0 + 0.0 * y["phi"],
            "int_p_AR_SYS": y["p_AR_SYS"],
            "int_Q_AV": Q["Q_AV"],
        }
        if self.baroreflex:
            f_as = _afferent(y["P_tilde"], p["P_n"])
            f_as_n = _afferent(p["P_n"], p["P_n"])
            ds = _s_sym(_sympathetic(f_as)) - _s_sym(_sympathetic(f_as_n))
            dv = _vagal(f_as) - _vagal(f_as_n)
            d["P_tilde"] = (y["p_AR_SYS"] - y["P_tilde"]) / p["tau_p"]
            d["x_R"] = (p["G_R"] * ds - y["x_R"]) / p["tau_R"]
            d["x_E"] = (p["G_E"] * ds - y["x_E"]) / p["tau_E"]
            d["x_Ts"] = (p["G_Ts"] * ds - y["x_Ts"]) / p["tau_Ts"]
            d["x_Tv"] = (p["G_Tv"] * dv - y["x_Tv"]) / p["tau_Tv"]
        return d

    def init(self, p):
        z = 0.0 * p["HR"]
        y = {k: v + z for k, v in INITIAL.items()}
        y.update(phi=z, int_p_AR_SYS=z, int_Q_AV=z)
        if self.baroreflex:
            y.update(P_tilde=p["P_n"] + z, x_R=z, x_E=z, x_Ts=z, x_Tv=z)
        return y

    def observe(self, t, y, p):
        HR, R_sys, EA = self._effective(y, p)
        pr = self._pressures(y, p, EA)
        Q = self._flows(pr, p)
        out = {k: pr[f"p_{k[2:]}"] for k in ("p_LA", "p_LV", "p_RA", "p_RV")}
        out.update(Q)
        out["p_AR"] = y["p_AR_SYS"]
        out["HR_eff"] = HR + 0.0 * y["phi"]
        out["R_sys_eff"] = R_sys + 0.0 * y["phi"]
        out["V_total"] = blood_volume(y, p)
        return out


def blood_volume(y: Mapping, p: Mapping):
    """Total (stressed) blood volume, mL: chamber volumes plus ``C p`` of each vessel."""
    v = sum(y[f"V_{X}"] for X in CHAMBERS)
    return v + sum(p[f"C_{w}"] * y[f"p_{w}"] for w in VESSELS)


# ---------------------------------------------------------------------------------
# per-beat reduction
# ---------------------------------------------------------------------------------
METRICS = ("SBP", "DBP", "MAP", "SV", "EF", "CO", "EDV", "ESV", "HR")
METRIC_UNITS = dict(
    SBP="mmHg", DBP="mmHg", MAP="mmHg", SV="mL", EF="%", CO="L/min", EDV="mL", ESV="mL",
    HR="1/min",
)  # fmt: skip


def _interp_rows(xq, x, f):
    """Linear interpolation along the last axis, row by row (``x`` increasing)."""
    fn = lambda a, b, c: jnp.interp(a, b, c)  # noqa: E731
    for _ in range(x.ndim - 1):
        fn = jax.vmap(fn)
    return fn(xq, x, f)


def beat_metrics(result, beat: int | None = None, prefix: str = "") -> dict:
    """Per-beat hemodynamics of one beat of a saved trajectory of :class:`Circulation`.

    The beat is located with the phase state ``phi``: beat ``k`` spans ``k <= phi <
    k + 1``. Mean arterial pressure and stroke volume come from the cumulative
    integrals ``int_p_AR_SYS`` and ``int_Q_AV`` interpolated at the beat's ends (so
    they are accurate even on a coarse save grid); extremes (systolic and diastolic
    pressure, end-diastolic and end-systolic volumes) are taken over the saves
    inside the beat, so save densely (>= 100 points per beat) for those.

    Arguments:
        result: a :class:`~twinjax.Result` of a :class:`Circulation` (one patient or a
            batch; times shared or per patient).
        beat: which beat (0-based); default the last complete beat (per patient).
        prefix: namespace of the circulation's states in a coupled model (``"circ."``).

    Returns:
        ``{name: value}`` with ``SBP, DBP, MAP`` (mmHg), ``SV`` (mL, ejected through the
        aortic valve), ``EF`` (%, ``SV / EDV``), ``CO`` (L/min), ``EDV, ESV`` (mL, max
        and min LV volume), ``HR`` (1/min, from the beat's duration); scalars or
        ``(N,)``.
    """
    st = {k[len(prefix) :]: v for k, v in result.states.items() if k.startswith(prefix)}
    phi = st["phi"]
    t = jnp.broadcast_to(result.times, phi.shape)
    k = jnp.floor(phi[..., -1:]) - 1.0 if beat is None else jnp.full(phi[..., -1:].shape, beat)
    k = k.astype(phi.dtype)
    t0 = _interp_rows(k, phi, t)
    t1 = _interp_rows(k + 1.0, phi, t)
    T = (t1 - t0)[..., 0]
    ip = st["int_p_AR_SYS"]
    iq = st["int_Q_AV"]
    MAP = (_interp_rows(k + 1.0, phi, ip) - _interp_rows(k, phi, ip))[..., 0] / T
    SV = (_interp_rows(k + 1.0, phi, iq) - _interp_rows(k, phi, iq))[..., 0]
    inside = (phi >= k) & (phi <= k + 1.0)
    return _reduce(st["p_AR_SYS"], st["V_LV"], inside, MAP, SV, T)


def _reduce(p_ar, v_lv, inside, MAP, SV, T):
    big = jnp.asarray(jnp.inf, p_ar.dtype)
    SBP = jnp.max(jnp.where(inside, p_ar, -big), axis=-1)
    DBP = jnp.min(jnp.where(inside, p_ar, big), axis=-1)
    EDV = jnp.max(jnp.where(inside, v_lv, -big), axis=-1)
    ESV = jnp.min(jnp.where(inside, v_lv, big), axis=-1)
    return dict(
        SBP=SBP,
        DBP=DBP,
        MAP=MAP,
        SV=SV,
        EF=100.0 * SV / EDV,
        CO=SV / T * 60.0 / 1000.0,
        EDV=EDV,
        ESV=ESV,
        HR=60.0 / T,
    )


# ---------------------------------------------------------------------------------
# periodic steady state
# ---------------------------------------------------------------------------------
class SteadyState(eqx.Module):
    """The outcome of :func:`to_periodic_steady_state`.

    Attributes:
        state: ``{state: (N,)}`` (scalars for one patient) at the start of the reduced
            beat, on the periodic orbit (phase reset to 0, cumulative integrals to 0).
        beats: number of beats simulated before convergence (per patient).
        converged: whether the beat-to-beat change fell below ``tol``.
        change: the last beat-to-beat change (see :func:`to_periodic_steady_state`).
        metrics: per-beat hemodynamics of one more beat (see :func:`beat_metrics`);
            NaN for a patient whose status is not OK.
        beat: the densely saved last beat: ``{"t": ..., state and output names: ...}``
            with a trailing axis of ``n_save`` points (``t`` from the beat's start, s);
            NaN for a patient whose status is not OK.
        status: :class:`~twinjax.Status` code per patient: ``OK``, an integrator's
            failure code, or ``NOT_CONVERGED`` (``max_beats`` used up; ``state`` is then
            the last beat's start, a start for another try).
        params: the full parameter dict used.
    """

    state: dict
    beats: jax.Array
    converged: jax.Array
    change: jax.Array
    metrics: dict
    beat: dict
    status: jax.Array
    params: dict


def _phase_field(model):
    """The vector field with the phase as independent variable, plus elapsed time.

    ``dY/dphi = f(Y) / (dphi/dt)`` and ``dt/dphi = 1 / (dphi/dt)`` (appended last), so
    that integrating over ``[k, k + 1]`` is exactly one beat whatever the heart rate.
    """
    f = vector_field(model)
    i_phi = model.state_names.index("phi")

    def g(s, Z, args):
        dY = f(s, Z[..., :-1], args)
        rate = dY[..., i_phi : i_phi + 1]
        return jnp.concatenate([dY / rate, 1.0 / rate], -1)

    return g


def _dynamic_mask(model):
    return np.asarray([not s.cumulative for s in model.states])


def _beat_map(model, solver, p, Y0):
    """The period map of :mod:`twinjax.solve._periodic` for the circulation:
    ``(G, embed, g, args, x0)``. ``G`` maps the non-cumulative states ``x`` at the start
    of a beat to those one beat later, integrated in the phase from 0 to 1 (0 to 0 for
    inactive patients) with the phase and cumulative integrals reset to 0; ``embed``
    puts ``x`` back into the full state, ``g`` is the phase field and ``x0`` the start
    (the non-cumulative part of ``Y0``)."""
    g = _phase_field(model)
    n, S = Y0.shape
    dtype = Y0.dtype
    dyn = _dynamic_mask(model)
    idx = np.flatnonzero(dyn)
    Ybase = jnp.where(jnp.asarray(dyn)[None, :], Y0, 0.0)  # phase and integrals at 0
    args = (p, jnp.zeros((n, S), dtype))

    def embed(x):
        return Ybase.at[:, idx].set(x)

    def G(x, active):
        Z = jnp.concatenate([embed(x), jnp.zeros((n, 1), dtype)], -1)
        s1 = jnp.where(active, 1.0, 0.0).astype(dtype)
        _, Z1, st = solver.integrate(g, jnp.zeros((n,), dtype), s1, Z, None, args, model)
        return Z1[:, idx], st

    return G, embed, g, args, Y0[:, idx]


def _last_beat(model, solver, g, args, Y, n_save, status):
    """One more beat from the steady state ``Y`` (phase and integrals at 0), densely
    saved: ``(state, metrics, dense, status)``; NaN metrics and dense beat for a
    patient whose status is not OK."""
    n = Y.shape[0]
    dtype = Y.dtype
    Z = jnp.concatenate([Y, jnp.zeros((n, 1), dtype)], -1)
    ss = jnp.broadcast_to(jnp.linspace(0.0, 1.0, n_save, dtype=dtype), (n, n_save))
    Zs, Z1, st = solver.integrate(
        g, jnp.zeros((n,), dtype), jnp.ones((n,), dtype), Z, ss, args, model
    )
    status = first_failure(status, st)
    names = model.state_names
    p = args[0]
    states = {k: Zs[..., i] for i, k in enumerate(names)}
    t = Zs[..., -1]
    pe = {k: v[:, None] for k, v in p.items()}
    outputs = model.observe(t, states, pe)
    T = Z1[:, -1]
    i_p, i_q = names.index("int_p_AR_SYS"), names.index("int_Q_AV")
    MAP = Z1[:, i_p] / T
    SV = Z1[:, i_q]
    inside = jnp.ones(Zs.shape[:2], bool)
    metrics = _reduce(states["p_AR_SYS"], states["V_LV"], inside, MAP, SV, T)
    dense = {"t": t, **states, **{k: jnp.broadcast_to(v, t.shape) for k, v in outputs.items()}}
    bad = status != 0
    metrics = {k: jnp.where(bad, jnp.nan, v) for k, v in metrics.items()}
    dense = {k: jnp.where(bad[:, None], jnp.nan, v) for k, v in dense.items()}
    Y0s = {k: Z[:, i] for i, k in enumerate(names)}
    return Y0s, metrics, dense, status


@eqx.filter_jit
def _pss_core(model, solver, p, Y0, tol, max_beats, batch, n_save):
    G, embed, g, args, x0 = _beat_map(model, solver, p, Y0)
    fp = solve_fixed_point(G, x0, method="plain", tol=tol, max_iter=max_beats, batch=batch)
    Y0s, metrics, dense, status = _last_beat(model, solver, g, args, embed(fp.x), n_save, fp.status)
    return Y0s, fp.iterations, fp.converged, fp.residual, metrics, dense, status


def to_periodic_steady_state(
    model: Circulation,
    params: Mapping | None = None,
    solver=None,
    *,
    tol: float = 1e-3,
    max_beats: int = 200,
    batch: int = 1,
    n_save: int = 201,
    y0: Mapping | None = None,
    dtype=None,
) -> SteadyState:
    """Run the circulation beat by beat until it reaches its periodic steady state.

    Each beat is integrated with the phase ``phi`` as the independent variable, from
    ``phi = 0`` to 1 (so a beat is exactly one cycle even when the heart rate changes
    within it, as with the baroreflex); the elapsed time is integrated alongside. A
    patient has converged when the largest change of a non-cumulative state between
    the starts of two consecutive beats, relative to ``1 + |y|`` (mL, mmHg, mL/s),
    falls below ``tol``; converged patients stop (their segments have zero length)
    while the others go on (plain fixed-point iteration of the beat map, with
    :func:`twinjax.solve._periodic.solve_fixed_point`). Then one more beat is
    integrated with ``n_save`` saves and reduced to per-beat metrics.

    Arguments:
        model: a :class:`Circulation` (with or without baroreflex).
        params: ``{name: value}``; scalars for one patient, ``(N,)`` arrays for a batch.
        solver: ``solvers.Ensemble(...)`` or ``solvers.Diffrax(...)`` (default Diffrax
            with rtol 1e-6, atol 1e-6).
        tol: convergence tolerance of the beat-to-beat change.
        max_beats: give up after this many beats (``converged`` is then False and the
            status ``Status.NOT_CONVERGED``).
        batch: beats per convergence check (``beats`` is then a multiple of it).
        n_save: saves over the reduced beat (extremes are taken over them).
        y0: initial state (default ``model.init(params)``), e.g. a previous steady state.
        dtype: floating dtype (default float64 with x64 on, else float32).

    Returns:
        A :class:`SteadyState`: per patient the number of beats, convergence flag,
        the state at beat start, metrics ``SBP, DBP, MAP, SV, EF, CO, EDV, ESV, HR``
        and the densely saved beat (for :func:`pv_loop`).
    """
    if not isinstance(model, Circulation):
        raise TypeError(f"to_periodic_steady_state needs a Circulation, got {type(model)}")
    if not (tol > 0 and max_beats >= 1 and batch >= 1 and n_save >= 3):
        raise ValueError("need tol > 0, max_beats >= 1, batch >= 1 and n_save >= 3")
    from ..model._model import _default_float

    dtype = dtype or _default_float()
    solver = solver if solver is not None else Diffrax(rtol=1e-6, atol=1e-6)
    p, N = model.complete(params, dtype=dtype)
    nb = N or 1
    p = {k: jnp.broadcast_to(v, (nb,)) for k, v in p.items()}
    y = model.init(p) if y0 is None else {k: jnp.asarray(v, dtype) for k, v in y0.items()}
    Y0 = stack_state(model, y, (nb,)).astype(dtype)
    out = _pss_core(model, solver, p, Y0, tol, int(max_beats), int(batch), int(n_save))
    Ys, beats, conv, ch, metrics, dense, status = out
    if N is None:
        pick = lambda d: {k: v[0] for k, v in d.items()}  # noqa: E731
        Ys, metrics, dense, p = pick(Ys), pick(metrics), pick(dense), pick(p)
        beats, conv, ch, status = beats[0], conv[0], ch[0], status[0]
    return SteadyState(Ys, beats, conv, ch, metrics, dense, status, p)


def pv_loop(ss: SteadyState, chamber: str = "LV"):
    """The pressure-volume loop of a chamber over the reduced steady-state beat.

    Arguments:
        ss: a :class:`SteadyState` from :func:`to_periodic_steady_state`.
        chamber: ``"LV"``, ``"RV"``, ``"LA"`` or ``"RA"``.

    Returns:
        ``(V, p)``: volumes (mL) and pressures (mmHg), trailing axis ``n_save``.
    """
    if chamber not in CHAMBERS:
        raise ValueError(f"chamber must be one of {CHAMBERS}, got {chamber!r}")
    return ss.beat[f"V_{chamber}"], ss.beat[f"p_{chamber}"]


from ._multiscale import quasi_static as quasi_static  # noqa: E402  (uses the above)
