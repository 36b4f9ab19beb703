"""Target-mediated drug disposition (TMDD): a drug that binds its pharmacological
target with high affinity, and whose binding is part of its elimination.

The full one-compartment TMDD model of Mager & Jusko (2001): free drug ``C`` in the
central volume ``V`` binds free target ``R`` (second-order, ``KON``), the complex
``RC`` dissociates (``KOFF``) and is internalised (``KINT``); the target is made at a
constant rate ``KSYN = R0 * KDEG`` and lost at ``KDEG``; free drug is cleared
linearly (``CL``).

- ``dA/dt = -CL C - V (KON C R - KOFF RC)``, with ``C = A / V``
- ``dR/dt = KSYN - KDEG R - (KON C R - KOFF RC)``
- ``dRC/dt = KON C R - KOFF RC - KINT RC``

Amounts in nmol (doses go into ``central``), volumes in L, concentrations in nmol/L
(nM), time in h. With fast binding (``KON R0`` and ``KON C`` much larger than the
elimination rates) the system is stiff: binding equilibrates in minutes while the
drug is eliminated over days. The model therefore declares ``stiff = True``
(``solvers.Ensemble()`` picks its Rosenbrock method, ``solvers.Diffrax()`` Kvaerno5).

References:
    - Mager DE, Jusko WJ. General pharmacokinetic model for drugs exhibiting
      target-mediated drug disposition. J Pharmacokinet Pharmacodyn 28:507-532,
      2001 (the model).
    - Dua P, Hawkins E, van der Graaf PH. A tutorial on target-mediated drug
      disposition (TMDD) models. CPT Pharmacometrics Syst Pharmacol 4:324-337, 2015
      (typical ranges of monoclonal-antibody TMDD parameters).
"""

from __future__ import annotations

from ..ode import Model, State
from ..ode._param import positive

_ILL = "illustrative monoclonal-antibody value (Dua et al. 2015 ranges)"


class TMDD(Model):
    """The full one-compartment TMDD model (Mager & Jusko 2001); see the module notes.

    Outputs: ``C`` free drug, ``R`` free target, ``RC`` complex, ``Ctot = C + RC``
    total drug and ``Rtot = R + RC`` total target (all nM).
    """

    stiff = True
    time_unit = "h"
    reference = "Mager & Jusko 2001"

    @property
    def states(self):  # type: ignore[override]
        return (
            State("central", "nmol", "free drug amount in the central volume"),
            State("R", "nmol/L", "free target concentration"),
            State("RC", "nmol/L", "drug-target complex concentration"),
        )

    @property
    def params(self):  # type: ignore[override]
        return (
            positive(
                "CL", 0.01, "L/h", upper=1e3, source=_ILL, doc="linear clearance of free drug"
            ),
            positive("V", 3.0, "L", upper=1e4, source=_ILL, doc="central volume"),
            positive(
                "KON",
                1.0,
                "L/nmol/h",
                upper=1e5,
                source=_ILL,
                doc="second-order association rate constant",
            ),
            positive("KOFF", 0.1, "1/h", upper=1e5, source=_ILL, doc="dissociation rate constant"),
            positive(
                "KINT", 0.05, "1/h", upper=1e3, source=_ILL, doc="complex internalisation rate"
            ),
            positive(
                "KDEG", 0.1, "1/h", upper=1e3, source=_ILL, doc="free-target degradation rate"
            ),
            positive("R0", 10.0, "nmol/L", upper=1e6, source=_ILL, doc="baseline free target"),
        )

    def rhs(self, t, y, p, u):
        C = y["central"] / p["V"]
        R, RC = y["R"], y["RC"]
        bind = p["KON"] * C * R - p["KOFF"] * RC
        return {
            "central": -p["CL"] * C - p["V"] * bind,
            "R": p["R0"] * p["KDEG"] - p["KDEG"] * R - bind,
            "RC": bind - p["KINT"] * RC,
        }

    def init(self, p):
        return {"central": 0.0 * p["V"], "R": p["R0"], "RC": 0.0 * p["R0"]}

    def observe(self, t, y, p):
        C = y["central"] / p["V"]
        return {
            "C": C,
            "R": y["R"],
            "RC": y["RC"],
            "Ctot": C + y["RC"],
            "Rtot": y["R"] + y["RC"],
        }
