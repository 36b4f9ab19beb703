"""The Bergman minimal model of glucose kinetics with insulin kinetics, and the IVGTT.

Glucose ``G`` disappears by glucose effectiveness ``Sg`` and by remote insulin
action ``X`` (Bergman et al. 1979); insulin sensitivity is ``Si = p3 / p2``.
Plasma insulin is not a measured forcing here but the minimal model of insulin
kinetics (Toffolo et al. 1980; Bergman et al. 1981): first-order clearance ``n``
and second-phase secretion proportional to the glucose excess above a threshold
``h`` times the time since the glucose bolus. The first-phase insulin release is
an insulin bolus at t = 0 (``first_phase`` of :func:`ivgtt`). This makes the
model self-contained (it needs no data to run) and differentiable, at the price
of assuming the intravenous glucose bolus is given at t = 0.

Time in min, glucose in mg/dL, insulin in µU/mL, ``X`` in 1/min.

References:
    - Bergman RN, Ider YZ, Bowden CR, Cobelli C. Quantitative estimation of insulin
      sensitivity. Am J Physiol 236:E667-E677, 1979.
    - Toffolo G, Bergman RN, Finegood DT, Bowden CR, Cobelli C. Quantitative
      estimation of beta cell sensitivity to glucose in the intact organism: a
      minimal model of insulin kinetics in the dog. Diabetes 29:979-990, 1980.
    - Bergman RN, Phillips LS, Cobelli C. Physiologic evaluation of factors controlling
      glucose tolerance in man. J Clin Invest 68:1456-1467, 1981.
    - Pacini G, Bergman RN. MINMOD: a computer program to calculate insulin sensitivity
      and pancreatic responsivity from the frequently sampled intravenous glucose
      tolerance test. Comput Methods Programs Biomed 23:113-122, 1986.
    - Bergman RN. Toward physiological understanding of glucose tolerance: minimal-model
      approach. Diabetes 38:1512-1527, 1989.
"""

from __future__ import annotations

import jax.numpy as jnp

from ...dosing import Dose, Regimen
from ...ode import Model, Param, State
from ...ode._param import positive

_P86 = "Pacini & Bergman 1986 (MINMOD), normal subjects; Bergman 1989 Table 1 range"
_B81 = "Bergman, Phillips & Cobelli 1981 J Clin Invest 68:1456 (normal subjects)"


class MinimalModel(Model):
    """The Bergman minimal model (glucose ``G``, remote insulin ``X``) with insulin kinetics.

    Equations (Bergman et al. 1979; insulin: Toffolo et al. 1980, Bergman et al. 1981)::

        dG/dt = -(Sg + X) G + Sg Gb
        dX/dt = -p2 X + p2 Si (I - Ib)          (p3 = p2 Si)
        dI/dt = -n (I - Ib) + gamma max(G - h, 0) t

    States: ``G`` (mg/dL), ``X`` (1/min), ``I`` (µU/mL); the basal state is
    ``(Gb, 0, Ib)``. An IVGTT is a glucose bolus into ``G`` (``1000 * dose / V``
    mg/dL for ``dose`` g/kg) and a first-phase insulin bolus into ``I`` at t = 0:
    see :func:`ivgtt`. With ``gamma = 0`` and no insulin bolus, ``I = Ib``, ``X = 0``
    and ``G = Gb + (G0 - Gb) exp(-Sg t)`` exactly.

    Outputs: ``G``, ``I``, ``X``.
    """

    time_unit = "min"
    reference = (
        "Bergman et al. 1979 Am J Physiol 236:E667; Bergman, Phillips & Cobelli 1981 "
        "J Clin Invest 68:1456; Pacini & Bergman 1986 Comput Methods Programs Biomed 23:113"
    )

    @property
    def states(self) -> tuple[State, ...]:  # type: ignore[override]
        return (
            State("G", "mg/dL", "plasma glucose"),
            State("X", "1/min", "remote insulin action"),
            State("I", "uU/mL", "plasma insulin"),
        )

    @property
    def params(self) -> tuple[Param, ...]:  # type: ignore[override]
        return (
            positive("Sg", 0.026, "1/min", upper=1.0, source=_P86, doc="glucose effectiveness"),
            positive(
                "Si", 5.0e-4, "1/min per uU/mL", upper=1.0, source=_P86, doc="insulin sensitivity"
            ),
            positive(
                "p2", 0.025, "1/min", upper=10.0, source=_P86, doc="remote insulin action decay"
            ),
            positive("Gb", 92.0, "mg/dL", upper=1000.0, source=_P86, doc="basal glucose"),
            positive("Ib", 11.0, "uU/mL", upper=1000.0, source=_P86, doc="basal insulin"),
            positive(
                "V",
                1.7,
                "dL/kg",
                upper=10.0,
                source="Bergman 1989 (glucose space 1.5-1.9 dL/kg); sets G0 = Gb + D/V",
                doc="glucose distribution volume",
            ),
            positive("n", 0.14, "1/min", upper=10.0, source=_B81, doc="insulin clearance rate"),
            positive(
                "gamma",
                0.004,
                "uU/mL per mg/dL per min^2",
                upper=10.0,
                source=_B81,
                doc="second-phase secretion (pancreatic responsivity)",
            ),
            positive(
                "h", 92.0, "mg/dL", upper=1000.0, source=_B81, doc="glucose threshold of secretion"
            ),
        )

    def init(self, p):
        return {"G": p["Gb"], "X": jnp.zeros_like(p["Gb"]), "I": p["Ib"]}

    def rhs(self, t, y, p, u):
        G, X, I = y["G"], y["X"], y["I"]
        return {
            "G": -(p["Sg"] + X) * G + p["Sg"] * p["Gb"],
            "X": -p["p2"] * X + p["p2"] * p["Si"] * (I - p["Ib"]),
            "I": -p["n"] * (I - p["Ib"]) + p["gamma"] * jnp.maximum(G - p["h"], 0.0) * t,
        }

    def observe(self, t, y, p):
        return {"G": y["G"], "I": y["I"], "X": y["X"]}


IVGTT_TIMES: tuple[int, ...]  # extended below
IVGTT_TIMES = (0, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 19, 22, 25, 30, 40, 50, 60, 70, 80, 90, 100)
IVGTT_TIMES = IVGTT_TIMES + (120, 140, 160, 180)
"""The frequently sampled IVGTT schedule (min) used with MINMOD (Pacini & Bergman 1986)."""


def ivgtt(V=1.7, dose: float = 0.3, first_phase: float = 0.0) -> Regimen:
    """The intravenous glucose tolerance test: a glucose bolus (and insulin) at t = 0.

    Arguments:
        V: the glucose distribution volume (dL/kg); a JAX scalar keeps the
            gradient with respect to it.
        dose: glucose dose in g/kg body weight (0.3 g/kg in the standard FSIGT).
        first_phase: first-phase insulin response, an increment of plasma insulin
            (µU/mL) at t = 0; 0 (default) leaves only the second phase.

    Returns:
        A :class:`~twinjax.Regimen` for :class:`MinimalModel`.
    """
    doses = [Dose(1000.0 * dose / V, "G", 0.0)]
    if not (isinstance(first_phase, (int, float)) and first_phase == 0):
        doses.append(Dose(first_phase, "I", 0.0))
    return Regimen(doses)
