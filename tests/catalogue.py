"""The catalogue of shipped models: every model-generic test runs over it.

Adding a model here covers it by: parameter-table checks, float32/float64,
single vs batch equality, recompilation guards, gradients against finite
differences (parameters, a dose amount and a dose time), Ensemble vs Diffrax.
The checks themselves are in ``model_checks.py``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

import twinjax as tj
from twinjax.models import pd, pk


@dataclasses.dataclass
class Entry:
    id: str
    model: tj.Model
    dose_cmt: str | None = None  # compartment of the test dose (None: no dosing)
    params: dict = dataclasses.field(default_factory=dict)  # away from bounds for FD
    output: str = "C"
    times: jnp.ndarray = dataclasses.field(default_factory=lambda: jnp.linspace(0.0, 24.0, 25))
    dose_amt: float = 100.0
    dose_time: float = 1.3  # not on the save grid: the output jumps there
    dose_dur: float = 0.0
    # parameters checked against finite differences (None: all; large models pick a few)
    grad_params: tuple | None = None
    # generic tests this entry skips, with the reason: {"test name": "why"}
    skip: dict = dataclasses.field(default_factory=dict)
    # tolerances of the tight reference solve used by the generic tests
    tight_rtol: float = 1e-11
    tight_atol: float = 1e-12
    # fixed step of the RK4 check in the Ensemble-vs-Diffrax test (None: skip RK4)
    rk4_dt: float | None = 0.01

    def regimen(self, amt=None, time=None):
        if self.dose_cmt is None:
            return None
        return tj.Regimen(
            [
                tj.Dose(
                    self.dose_amt if amt is None else amt,
                    self.dose_cmt,
                    self.dose_time if time is None else time,
                    dur=self.dose_dur,
                )
            ]
        )


_ORAL = dict(F=0.8, TLAG=0.3, KA=1.1)

CATALOGUE = [
    Entry("pk1-iv", pk.one_compartment(), "central"),
    Entry("pk1-infusion", pk.one_compartment(), "central", dose_dur=2.0),
    Entry("pk2-oral", pk.two_compartment("first_order"), "depot", dict(_ORAL)),
    Entry("pk3-oral", pk.three_compartment("first_order"), "depot", dict(_ORAL)),
    Entry("pk1-transit", pk.one_compartment("transit", n_transit=3), "depot", dict(_ORAL)),
    Entry("pk1-mm", pk.one_compartment(elimination="michaelis_menten"), "central"),
    Entry("pk2-effect", pk.two_compartment(effect=True), "central", output="Ce"),
    Entry("pd-emax", pd.DirectEmax(sigmoid=True), None, dict(C=2.0, GAMMA=1.5), output="E"),
    Entry("pd-idr1", pd.IndirectResponse(1), None, dict(C=1.5), output="R"),
    Entry("pd-idr2", pd.IndirectResponse(2, hill=True), None, dict(C=1.5, GAMMA=1.3), output="R"),
    Entry("pd-idr3", pd.IndirectResponse(3), None, dict(C=1.5), output="R"),
    Entry("pd-idr4", pd.IndirectResponse(4), None, dict(C=1.5), output="R"),
    Entry("pd-turnover", pd.PrecursorTurnover(), None, dict(C=1.0), output="R"),
    Entry(
        "pkpd-idr3",
        tj.couple(
            {"pk": pk.one_compartment("first_order"), "pd": pd.IndirectResponse(3)},
            [tj.Link("pk.C", "pd.C")],
        ),
        "pk.depot",
        {"pk.F": 0.8, "pk.TLAG": 0.3},
        output="pd.R",
    ),
    Entry(
        "pk-link-turnover",
        tj.couple(
            {"pk": pk.one_compartment(), "pd": pd.PrecursorTurnover()},
            [tj.Link("pk.C", "pd.KP", "sigmoid", {"Emax": 1.5, "EC50": 1.0, "gamma": 2.0})],
        ),
        "pk.central",
        output="pd.R",
    ),
]

IDS = [e.id for e in CATALOGUE]


def _discover():
    """Entries of other model families: every ``tests/catalogue_*.py`` with ``ENTRIES``."""
    import importlib
    import pathlib

    out = []
    for f in sorted(pathlib.Path(__file__).parent.glob("catalogue_*.py")):
        out += list(importlib.import_module(f.stem).ENTRIES)
    return out


CATALOGUE += _discover()
IDS = [e.id for e in CATALOGUE]

# The entries whose gradient check runs in reverse mode (jax.grad through diffrax's
# checkpointed adjoint), one cheap entry per test file: every other entry checks the same
# derivatives in forward mode, which compiles one program instead of two (model_checks.py).
REVERSE_MODE = ("pk2-oral", "bergman-ivgtt")
