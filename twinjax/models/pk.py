"""Compartmental pharmacokinetics: 1-, 2- and 3-compartment linear and nonlinear PK.

Parameterised as pharmacometricians write them (NONMEM ADVAN1-4/11/12 style):
clearances and volumes ``CL, V, Q, V2, Q3, V3``, absorption rate ``KA``,
bioavailability ``F`` and lag ``TLAG`` of the depot, mean transit time ``MTT``
(transit-compartment absorption, Savic et al. 2007), Michaelis-Menten elimination
``VMAX, KM``, and an effect compartment ``KE0`` (Sheiner et al. 1979).

Amounts in mg, volumes in L, time in h, concentrations in mg/L.

References:
    - Gabrielsson J, Weiner D. *Pharmacokinetic and Pharmacodynamic Data Analysis:
      Concepts and Applications*, 5th ed., 2016 (compartmental models, closed forms).
    - Savic RM, Jonker DM, Kerbusch T, Karlsson MO. Implementation of a transit
      compartment model for describing drug absorption in pharmacokinetic studies.
      J Pharmacokinet Pharmacodyn 34:711-726, 2007.
    - Sheiner LB, Stanski DR, Vozeh S, Miller RD, Ham J. Simultaneous modeling of
      pharmacokinetics and pharmacodynamics: application to d-tubocurarine. Clin
      Pharmacol Ther 25:358-371, 1979.
"""

from __future__ import annotations

import math

from ..ode import Model, Param, State
from ..ode._param import fraction, positive, real

_TYPICAL = "illustrative typical value (Gabrielsson & Weiner 2016 ranges)"

ABSORPTION = ("iv", "first_order", "transit")
ELIMINATION = ("linear", "michaelis_menten")


class Compartmental(Model):
    """A mammillary 1-, 2- or 3-compartment PK model.

    Arguments:
        n_cmt: number of disposition compartments (1, 2 or 3).
        absorption: ``"iv"`` (doses go to ``"central"``), ``"first_order"`` (a
            ``"depot"`` absorbed with rate ``KA``), or ``"transit"`` (``"depot"`` and
            ``n_transit`` transit compartments with rate ``ktr = (n_transit+1)/MTT``,
            then absorption with ``KA``).
        n_transit: number of transit compartments (``absorption="transit"``).
        elimination: ``"linear"`` (``CL``) or ``"michaelis_menten"`` (``VMAX``, ``KM``).
        effect: add an effect compartment ``"effect"`` (concentration ``Ce``, rate
            ``KE0``).
        F_upper: upper bound of the depot bioavailability ``F`` (default 1; larger
            where relative bioavailability above 1 is real).

    Dose modifiers: the depot has bioavailability ``F`` and lag ``TLAG`` (NONMEM's F1
    and ALAG1 of the depot). Any compartment can get ``Fn``, ``ALAGn``, ``Rn``, ``Dn``
    (NONMEM names, ``n`` the 1-based state number) with
    :meth:`~twinjax.Model.with_dose_modifiers`, e.g.
    ``one_compartment("first_order").with_dose_modifiers(central=("F", "ALAG", "R", "D"))``
    gives ``F2``, ``ALAG2``, ``R2``, ``D2`` on the central compartment.

    States (mg unless stated): ``depot``, ``transit1..n``, ``central``,
    ``periph`` (2-3 cmt), ``periph2`` (3 cmt), ``effect`` (mg/L), and ``eliminated``
    (cumulative amount eliminated, for mass balance).

    Outputs: ``C`` = central / V (mg/L); ``Ce`` with an effect compartment.
    """

    n_cmt: int = 1
    absorption: str = "iv"
    n_transit: int = 0
    elimination: str = "linear"
    effect: bool = False
    F_upper: float = 1.0

    time_unit = "h"
    reference = "Gabrielsson & Weiner 2016; Savic et al. 2007 (transit); Sheiner et al. 1979"

    def __check_init__(self):
        if self.n_cmt not in (1, 2, 3):
            raise ValueError(f"n_cmt must be 1, 2 or 3, got {self.n_cmt}")
        if self.absorption not in ABSORPTION:
            raise ValueError(f"absorption must be one of {ABSORPTION}, got {self.absorption!r}")
        if self.elimination not in ELIMINATION:
            raise ValueError(f"elimination must be one of {ELIMINATION}, got {self.elimination!r}")
        if self.absorption == "transit" and self.n_transit < 1:
            raise ValueError("transit absorption needs n_transit >= 1")
        if self.absorption != "transit" and self.n_transit != 0:
            raise ValueError("n_transit is only used with absorption='transit'")
        if not (math.isfinite(self.F_upper) and self.F_upper >= 1.0):
            raise ValueError(f"F_upper must be a finite number >= 1, got {self.F_upper}")

    @property
    def _oral(self) -> bool:
        return self.absorption != "iv"

    @property
    def states(self) -> tuple[State, ...]:  # type: ignore[override]
        s = []
        if self._oral:
            s.append(State("depot", "mg", "absorption depot (gut)"))
        for i in range(self.n_transit):
            s.append(State(f"transit{i + 1}", "mg", f"transit compartment {i + 1}"))
        s.append(State("central", "mg", "amount in the central compartment"))
        if self.n_cmt >= 2:
            s.append(State("periph", "mg", "amount in the first peripheral compartment"))
        if self.n_cmt >= 3:
            s.append(State("periph2", "mg", "amount in the second peripheral compartment"))
        if self.effect:
            s.append(State("effect", "mg/L", "effect-site concentration Ce"))
        s.append(State("eliminated", "mg", "cumulative amount eliminated", cumulative=True))
        return tuple(s)

    @property
    def params(self) -> tuple[Param, ...]:  # type: ignore[override]
        q = []
        if self.elimination == "linear":
            q.append(positive("CL", 5.0, "L/h", upper=1e4, source=_TYPICAL, doc="clearance"))
        else:
            q.append(
                positive(
                    "VMAX", 50.0, "mg/h", upper=1e6, source=_TYPICAL, doc="maximal elimination rate"
                )
            )
            q.append(
                positive("KM", 5.0, "mg/L", upper=1e5, source=_TYPICAL, doc="Michaelis constant")
            )
        q.append(positive("V", 50.0, "L", upper=1e5, source=_TYPICAL, doc="central volume"))
        if self.n_cmt >= 2:
            q.append(
                positive(
                    "Q",
                    10.0,
                    "L/h",
                    upper=1e4,
                    source=_TYPICAL,
                    doc="intercompartmental clearance (periph)",
                )
            )
            q.append(
                positive("V2", 100.0, "L", upper=1e5, source=_TYPICAL, doc="peripheral volume")
            )
        if self.n_cmt >= 3:
            q.append(
                positive(
                    "Q3",
                    2.0,
                    "L/h",
                    upper=1e4,
                    source=_TYPICAL,
                    doc="intercompartmental clearance (periph2)",
                )
            )
            q.append(
                positive(
                    "V3", 200.0, "L", upper=1e5, source=_TYPICAL, doc="second peripheral volume"
                )
            )
        if self._oral:
            q.append(
                positive(
                    "KA",
                    1.0,
                    "1/h",
                    upper=1e3,
                    source=_TYPICAL,
                    doc="first-order absorption rate constant",
                )
            )
            q.append(
                fraction(
                    "F",
                    1.0,
                    upper=self.F_upper,
                    source=_TYPICAL,
                    doc="bioavailability of the depot (NONMEM F1)",
                )
            )
            q.append(
                real(
                    "TLAG",
                    0.0,
                    "h",
                    lower=0.0,
                    upper=1e3,
                    source=_TYPICAL,
                    doc="absorption lag time of the depot",
                )
            )
        if self.absorption == "transit":
            q.append(
                positive(
                    "MTT",
                    2.0,
                    "h",
                    upper=1e3,
                    source="Savic et al. 2007",
                    doc="mean transit time, ktr = (n_transit + 1) / MTT",
                )
            )
        if self.effect:
            q.append(
                positive(
                    "KE0",
                    0.5,
                    "1/h",
                    upper=1e3,
                    source="Sheiner et al. 1979",
                    doc="effect-compartment equilibration rate",
                )
            )
        return tuple(q)

    def dose_parameters(self):
        return {"depot": ("F", "TLAG")} if self._oral else {}

    def rhs(self, t, y, p, u):
        d = {}
        C = y["central"] / p["V"]
        if self.elimination == "linear":
            elim = p["CL"] * C
        else:
            elim = p["VMAX"] * C / (p["KM"] + C)
        dc = -elim
        if self._oral:
            if self.absorption == "transit":
                ktr = (self.n_transit + 1) / p["MTT"]
                d["depot"] = -ktr * y["depot"]
                prev = ktr * y["depot"]
                for i in range(self.n_transit):
                    name = f"transit{i + 1}"
                    out = (p["KA"] if i == self.n_transit - 1 else ktr) * y[name]
                    d[name] = prev - out
                    prev = out
                dc = dc + prev
            else:
                d["depot"] = -p["KA"] * y["depot"]
                dc = dc + p["KA"] * y["depot"]
        if self.n_cmt >= 2:
            flow = p["Q"] * (C - y["periph"] / p["V2"])
            d["periph"] = flow
            dc = dc - flow
        if self.n_cmt >= 3:
            flow3 = p["Q3"] * (C - y["periph2"] / p["V3"])
            d["periph2"] = flow3
            dc = dc - flow3
        d["central"] = dc
        if self.effect:
            d["effect"] = p["KE0"] * (C - y["effect"])
        d["eliminated"] = elim
        return d

    def init(self, p):
        z = 0.0 * p["V"]
        return {s: z for s in self.state_names}

    def observe(self, t, y, p):
        out = {"C": y["central"] / p["V"]}
        if self.effect:
            out["Ce"] = y["effect"]
        return out


def one_compartment(absorption="iv", **kw) -> Compartmental:
    """1-compartment PK (``CL, V`` [+ ``KA, F, TLAG``]); see :class:`Compartmental`."""
    return Compartmental(n_cmt=1, absorption=absorption, **kw)


def two_compartment(absorption="iv", **kw) -> Compartmental:
    """2-compartment PK (``CL, V, Q, V2`` [+ absorption]); see :class:`Compartmental`."""
    return Compartmental(n_cmt=2, absorption=absorption, **kw)


def three_compartment(absorption="iv", **kw) -> Compartmental:
    """3-compartment PK (``CL, V, Q, V2, Q3, V3`` [+ absorption])."""
    return Compartmental(n_cmt=3, absorption=absorption, **kw)


def half_life(CL, V) -> float:
    """Elimination half-life of a 1-compartment model, ``ln 2 * V / CL``."""
    return math.log(2) * V / CL
