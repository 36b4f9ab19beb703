"""Pharmacodynamics: direct Emax, indirect-response and turnover models.

Each PD model reads the drug concentration from its parameter ``C`` (mg/L), which a
:class:`~twinjax.Link` of kind ``"direct"`` sets from a PK model's output in a
coupled model (``couple({"pk": ..., "pd": ...}, [Link("pk.C", "pd.C")])``). On its
own, ``C`` is a constant exposure.

References:
    - Holford NHG, Sheiner LB. Understanding the dose-effect relationship: clinical
      application of pharmacokinetic-pharmacodynamic models. Clin Pharmacokinet
      6:429-453, 1981 (Emax and sigmoid Emax).
    - Dayneka NL, Garg V, Jusko WJ. Comparison of four basic models of indirect
      pharmacodynamic responses. J Pharmacokinet Biopharm 21:457-478, 1993.
    - Sharma A, Ebling WF, Jusko WJ. Precursor-dependent indirect pharmacodynamic
      response model for tolerance and rebound phenomena. J Pharm Sci 87:1577-1584,
      1998 (precursor-pool turnover).
"""

from __future__ import annotations

import jax.numpy as jnp

from ..ode import Model, Param, State
from ..ode._param import fraction, positive, real

_ILL = "illustrative value"


def _hill(c, top, c50, gamma):
    cg = jnp.power(jnp.maximum(c, 0.0), gamma)
    return top * cg / (jnp.power(c50, gamma) + cg)


def _conc() -> Param:
    return real("C", 0.0, "mg/L", lower=0.0, doc="drug concentration driving the effect")


class DirectEmax(Model):
    """Direct (sigmoid) Emax model: ``E = E0 + Emax * C^g / (EC50^g + C^g)``.

    Arguments:
        sigmoid: include the Hill coefficient ``GAMMA`` (otherwise ``g = 1``).

    It has no state; its output ``E`` follows the concentration instantly.
    """

    sigmoid: bool = False
    time_unit = "h"
    reference = "Holford & Sheiner 1981"

    @property
    def states(self):  # type: ignore[override]
        return ()

    @property
    def params(self):  # type: ignore[override]
        q = [
            _conc(),
            real("E0", 0.0, "effect", doc="baseline effect", source=_ILL),
            real("EMAX", 100.0, "effect", doc="maximal drug effect", source=_ILL),
            positive("EC50", 1.0, "mg/L", upper=1e6, doc="concentration at half EMAX", source=_ILL),
        ]
        if self.sigmoid:
            q.append(positive("GAMMA", 1.0, "1", upper=50.0, doc="Hill coefficient", source=_ILL))
        return tuple(q)

    def rhs(self, t, y, p, u):
        return {}

    def init(self, p):
        return {}

    def observe(self, t, y, p):
        g = p["GAMMA"] if self.sigmoid else 1.0
        return {"E": p["E0"] + _hill(p["C"], p["EMAX"], p["EC50"], g) + 0.0 * t}


class IndirectResponse(Model):
    """The four basic indirect-response models of Dayneka, Garg & Jusko (1993).

    With ``kin = R0 * KOUT`` (baseline ``R0`` at steady state without drug),
    ``I(C) = IMAX C^g / (IC50^g + C^g)`` and ``S(C) = EMAX C^g / (EC50^g + C^g)``:

    - type 1, inhibition of production: ``dR/dt = kin (1 - I(C)) - KOUT R``
    - type 2, inhibition of loss:       ``dR/dt = kin - KOUT (1 - I(C)) R``
    - type 3, stimulation of production: ``dR/dt = kin (1 + S(C)) - KOUT R``
    - type 4, stimulation of loss:      ``dR/dt = kin - KOUT (1 + S(C)) R``

    Arguments:
        kind: 1, 2, 3 or 4.
        hill: include the Hill coefficient ``GAMMA``.
    """

    kind: int = 1
    hill: bool = False
    time_unit = "h"
    reference = "Dayneka, Garg & Jusko 1993"

    def __check_init__(self):
        if self.kind not in (1, 2, 3, 4):
            raise ValueError(f"IndirectResponse kind must be 1, 2, 3 or 4, got {self.kind}")

    @property
    def states(self):  # type: ignore[override]
        return (State("R", "response", "the response variable"),)

    @property
    def params(self):  # type: ignore[override]
        q = [
            _conc(),
            positive("R0", 100.0, "response", upper=1e9, doc="baseline response", source=_ILL),
            positive(
                "KOUT",
                0.1,
                "1/h",
                upper=1e3,
                doc="first-order loss rate of the response",
                source=_ILL,
            ),
        ]
        if self.kind in (1, 2):
            q.append(fraction("IMAX", 0.9, doc="maximal fractional inhibition", source=_ILL))
            q.append(
                positive("IC50", 1.0, "mg/L", upper=1e6, doc="half-inhibitory conc.", source=_ILL)
            )
        else:
            q.append(
                positive(
                    "EMAX", 2.0, "1", upper=1e3, doc="maximal fractional stimulation", source=_ILL
                )
            )
            q.append(
                positive("EC50", 1.0, "mg/L", upper=1e6, doc="half-stimulatory conc.", source=_ILL)
            )
        if self.hill:
            q.append(positive("GAMMA", 1.0, "1", upper=50.0, doc="Hill coefficient", source=_ILL))
        return tuple(q)

    def drug_effect(self, p):
        g = p["GAMMA"] if self.hill else 1.0
        if self.kind in (1, 2):
            return _hill(p["C"], p["IMAX"], p["IC50"], g)
        return _hill(p["C"], p["EMAX"], p["EC50"], g)

    def rhs(self, t, y, p, u):
        kin = p["R0"] * p["KOUT"]
        e = self.drug_effect(p)
        R = y["R"]
        if self.kind == 1:
            d = kin * (1 - e) - p["KOUT"] * R
        elif self.kind == 2:
            d = kin - p["KOUT"] * (1 - e) * R
        elif self.kind == 3:
            d = kin * (1 + e) - p["KOUT"] * R
        else:
            d = kin - p["KOUT"] * (1 + e) * R
        return {"R": d}

    def init(self, p):
        return {"R": p["R0"]}

    def observe(self, t, y, p):
        return {"R": y["R"], "change": y["R"] - p["R0"]}


class PrecursorTurnover(Model):
    """Precursor-pool turnover model (Sharma, Ebling & Jusko 1998).

    A precursor ``P`` is produced at ``k0 = R0 * KOUT`` and converted to the response
    ``R`` at rate ``KP``; the drug stimulates the conversion:

    ``dP/dt = k0 - KP (1 + S(C)) P``,  ``dR/dt = KP (1 + S(C)) P - KOUT R``,

    with ``S(C) = EMAX C / (EC50 + C)``. Baselines ``P0 = k0 / KP``, ``R0``. Sustained
    exposure depletes the precursor (tolerance) and stopping the drug gives a
    rebound below baseline.
    """

    time_unit = "h"
    reference = "Sharma, Ebling & Jusko 1998"

    @property
    def states(self):  # type: ignore[override]
        return (State("P", "response", "precursor pool"), State("R", "response", "response"))

    @property
    def params(self):  # type: ignore[override]
        return (
            _conc(),
            positive("R0", 100.0, "response", upper=1e9, doc="baseline response", source=_ILL),
            positive("KP", 0.5, "1/h", upper=1e3, doc="precursor to response rate", source=_ILL),
            positive("KOUT", 0.2, "1/h", upper=1e3, doc="loss rate of the response", source=_ILL),
            positive("EMAX", 2.0, "1", upper=1e3, doc="maximal stimulation of KP", source=_ILL),
            positive("EC50", 1.0, "mg/L", upper=1e6, doc="half-stimulatory conc.", source=_ILL),
        )

    def rhs(self, t, y, p, u):
        k0 = p["R0"] * p["KOUT"]
        s = 1.0 + p["EMAX"] * p["C"] / (p["EC50"] + p["C"])
        flux = p["KP"] * s * y["P"]
        return {"P": k0 - flux, "R": flux - p["KOUT"] * y["R"]}

    def init(self, p):
        k0 = p["R0"] * p["KOUT"]
        return {"P": k0 / p["KP"], "R": p["R0"]}

    def observe(self, t, y, p):
        return {"R": y["R"], "P": y["P"]}
