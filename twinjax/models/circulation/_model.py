"""The closed-loop 0-D circulation model (Regazzoni et al. 2022) and its optional
short-term baroreflex (Ursino 1998): states, parameters and equations. See the
package docstring (:mod:`twinjax.models.circulation`) for the equations and sources.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ...ode import Model, Param, State
from ...ode._param import fraction, positive, real

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
