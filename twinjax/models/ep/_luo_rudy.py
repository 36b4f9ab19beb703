"""Luo-Rudy 1991 (LR1) guinea-pig ventricular action potential model.

Luo CH, Rudy Y. A model of the ventricular cardiac action potential:
depolarization, repolarization, and their interaction. Circ Res 68:1501-1526, 1991.

The formulation is the updated one distributed by the Rudy laboratory and shipped
with Myokit as its example model (``myokit/_bin/example.mmt``): it differs from the
1991 paper in ``gNa = 16`` (paper: 23) mS/cm^2, in the slow-inward reversal
potential ``E_si = 7.7 - 13.0287 ln(Ca_i / Ca_o)``, and in the smooth switch
``a(V)`` replacing the ``V < -40 mV`` branches of the h and j rate constants. It is
used here because it lets a test compare against Myokit's CVODE simulation of the
same equations. Units: mV, ms, uA/cm^2, mM, C = 1 uF/cm^2.
"""

from __future__ import annotations

import jax.numpy as jnp

from ...ode import Param, State
from ...ode._param import positive
from ._cell import CellModel
from ._pacing import pacing_params

_LR = "Luo & Rudy 1991 Circ Res 68:1501 (Rudy-lab update, as in Myokit's example.mmt)"

_STATES = (
    State("V", "mV", "membrane potential"),
    State("m", "1", "INa activation gate"),
    State("h", "1", "INa fast inactivation gate"),
    State("j", "1", "INa slow inactivation gate"),
    State("d", "1", "Isi (L-type) activation gate"),
    State("f", "1", "Isi inactivation gate"),
    State("x", "1", "IK activation gate"),
    State("Ca_i", "mM", "intracellular calcium concentration"),
)

# initial state (Rudy-lab / Myokit example.mmt initial conditions)
_INIT = dict(V=-84.5286, m=0.0017, h=0.9832, j=0.995484, d=0.000003, f=1.0, x=0.0057, Ca_i=0.0002)


def _x_over_expm1(x):
    """``x / (exp(x) - 1)``, finite (and smooth) at ``x = 0``."""
    small = jnp.abs(x) < 1e-6
    xs = jnp.where(small, 1.0, x)
    return jnp.where(small, 1.0 - 0.5 * x, xs / jnp.expm1(xs))


class LuoRudy1991(CellModel):
    """The Luo-Rudy 1991 ventricular action potential model (8 states).

    Currents (uA/cm^2): INa (fast sodium), Isi (slow inward, L-type calcium), IK
    (time-dependent potassium), IK1 (time-independent potassium), IKp (plateau
    potassium), Ib (background). Drug block scales ``gNa`` (INa), ``gsi`` (ICaL),
    ``gK`` (IKs/IKr: LR1's only delayed rectifier; mapped to both) and ``gK1``.

    Outputs: ``V`` and every current, ``Iion``, ``Istim`` and ``qnet_current``
    (here ``Isi + IK + IK1``, the LR1 analogue of Dutta's qNet currents).

    Reference: Luo CH, Rudy Y. Circ Res 68:1501-1526, 1991.
    """

    gates = ("m", "h", "j", "d", "f", "x")
    qnet_currents = ("ICaL", "IK", "IK1")
    time_unit = "ms"
    reference = "Luo CH, Rudy Y. Circ Res 68:1501-1526, 1991"

    @property
    def states(self) -> tuple[State, ...]:  # type: ignore[override]
        return _STATES

    @property
    def params(self) -> tuple[Param, ...]:  # type: ignore[override]
        return (
            positive("gNa", 16.0, "mS/cm^2", upper=1e3, source=_LR, doc="max. INa conductance"),
            positive(
                "gsi",
                0.09,
                "mS/cm^2",
                upper=10.0,
                source=_LR,
                doc="max. slow inward (L-type Ca) conductance",
            ),
            positive(
                "gK",
                0.282,
                "mS/cm^2",
                upper=10.0,
                source=_LR,
                doc="max. IK conductance at K_o = 5.4 mM",
            ),
            positive(
                "gK1",
                0.6047,
                "mS/cm^2",
                upper=10.0,
                source=_LR,
                doc="max. IK1 conductance at K_o = 5.4 mM",
            ),
            positive("gKp", 0.0183, "mS/cm^2", upper=10.0, source=_LR, doc="IKp conductance"),
            positive(
                "gb", 0.03921, "mS/cm^2", upper=10.0, source=_LR, doc="background conductance"
            ),
            Param(
                "Eb", -59.87, "mV", -200.0, 200.0, "identity", _LR, "background reversal potential"
            ),
            positive("K_o", 5.4, "mM", upper=100.0, source=_LR, doc="extracellular K+"),
            positive("K_i", 145.0, "mM", upper=500.0, source=_LR, doc="intracellular K+"),
            positive("Na_o", 140.0, "mM", upper=500.0, source=_LR, doc="extracellular Na+"),
            positive("Na_i", 10.0, "mM", upper=500.0, source=_LR, doc="intracellular Na+"),
            positive("Ca_o", 1.8, "mM", upper=50.0, source=_LR, doc="extracellular Ca2+"),
            *pacing_params(
                1000.0,
                80.0,
                0.5,
                unit="uA/cm^2",
                source="Myokit example.mmt protocol (80 uA/cm^2, 0.5 ms)",
            ),
        )

    def init(self, p):
        z = 0.0 * p["gNa"]
        return {k: v + z for k, v in _INIT.items()}

    def evaluate(self, t, y, p):
        V = y["V"]
        RTF = 8314.0 * 310.0 / 96500.0  # R T / F (mV), F = 96500 as in LR1
        # INa
        ENa = RTF * jnp.log(p["Na_o"] / p["Na_i"])
        a = 1.0 - 1.0 / (1.0 + jnp.exp(-(V + 40.0) / 0.24))
        # 0.32 (V + 47.13) / (1 - exp(-0.1 (V + 47.13))), finite at V = -47.13
        am = 3.2 * _x_over_expm1(-0.1 * (V + 47.13))
        bm = 0.08 * jnp.exp(-V / 11.0)
        ah = a * 0.135 * jnp.exp((80.0 + V) / -6.8)
        bh = a * (3.56 * jnp.exp(0.079 * V) + 3.1e5 * jnp.exp(0.35 * V)) + (1.0 - a) / (
            0.13 * (1.0 + jnp.exp((V + 10.66) / -11.1))
        )
        aj = (
            a
            * (-127140.0 * jnp.exp(0.2444 * V) - 3.474e-5 * jnp.exp(-0.04391 * V))
            * (V + 37.78)
            / (1.0 + jnp.exp(0.311 * (V + 79.23)))
        )
        bj = a * (0.1212 * jnp.exp(-0.01052 * V) / (1.0 + jnp.exp(-0.1378 * (V + 40.14)))) + (
            1.0 - a
        ) * (0.3 * jnp.exp(-2.535e-7 * V) / (1.0 + jnp.exp(-0.1 * (V + 32.0))))
        INa = p["gNa"] * y["m"] ** 3 * y["h"] * y["j"] * (V - ENa)
        # Isi (slow inward, L-type calcium)
        Esi = 7.7 - 13.0287 * jnp.log(y["Ca_i"] / p["Ca_o"])
        ad = 0.095 * jnp.exp(-0.01 * (V - 5.0)) / (1.0 + jnp.exp(-0.072 * (V - 5.0)))
        bd = 0.07 * jnp.exp(-0.017 * (V + 44.0)) / (1.0 + jnp.exp(0.05 * (V + 44.0)))
        af = 0.012 * jnp.exp(-0.008 * (V + 28.0)) / (1.0 + jnp.exp(0.15 * (V + 28.0)))
        bf = 0.0065 * jnp.exp(-0.02 * (V + 30.0)) / (1.0 + jnp.exp(-0.2 * (V + 30.0)))
        Isi = p["gsi"] * y["d"] * y["f"] * (V - Esi)
        # IK (time-dependent potassium)
        ax = 0.0005 * jnp.exp(0.083 * (V + 50.0)) / (1.0 + jnp.exp(0.057 * (V + 50.0)))
        bx = 0.0013 * jnp.exp(-0.06 * (V + 20.0)) / (1.0 + jnp.exp(-0.04 * (V + 20.0)))
        near = jnp.abs(V + 77.0) < 1e-6
        Vs = jnp.where(near, -76.0, V)
        xi_reg = 2.837 * jnp.expm1(0.04 * (Vs + 77.0)) / ((Vs + 77.0) * jnp.exp(0.04 * (Vs + 35.0)))
        xi_lim = 2.837 * 0.04 / jnp.exp(0.04 * (V + 35.0))
        xi = jnp.where(V < -100.0, 1.0, jnp.where(near, xi_lim, xi_reg))
        sko = jnp.sqrt(p["K_o"] / 5.4)
        EK = RTF * jnp.log((p["K_o"] + 0.01833 * p["Na_o"]) / (p["K_i"] + 0.01833 * p["Na_i"]))
        IK = p["gK"] * sko * xi * y["x"] * (V - EK)
        # IK1
        EK1 = RTF * jnp.log(p["K_o"] / p["K_i"])
        ak1 = 1.02 / (1.0 + jnp.exp(0.2385 * (V - EK1 - 59.215)))
        bk1 = (
            0.49124 * jnp.exp(0.08032 * (V - EK1 + 5.476)) + jnp.exp(0.06175 * (V - EK1 - 594.31))
        ) / (1.0 + jnp.exp(-0.5143 * (V - EK1 + 4.753)))
        IK1 = p["gK1"] * sko * ak1 / (ak1 + bk1) * (V - EK1)
        # IKp, Ib
        IKp = p["gKp"] / (1.0 + jnp.exp((7.488 - V) / 5.98)) * (V - EK1)
        Ib = p["gb"] * (V - p["Eb"])
        Istim = self.stimulus(t, p)
        Iion = INa + Isi + IK + IK1 + IKp + Ib
        derivs = {
            "V": -(Iion + Istim),  # C_m = 1 uF/cm^2
            "Ca_i": -1e-4 * Isi + 0.07 * (1e-4 - y["Ca_i"]),
        }

        def gate(al, be):
            return al / (al + be), 1.0 / (al + be)

        gates = {
            "m": gate(am, bm),
            "h": gate(ah, bh),
            "j": gate(aj, bj),
            "d": gate(ad, bd),
            "f": gate(af, bf),
            "x": gate(ax, bx),
        }
        currents = dict(
            INa=INa, ICaL=Isi, IK=IK, IK1=IK1, IKp=IKp, Ib=Ib, Iion=Iion, Istim=Istim + 0.0 * V
        )
        return gates, derivs, currents
