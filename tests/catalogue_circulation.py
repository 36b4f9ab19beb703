"""Catalogue entries of the heart and liver twins (circulation, baroreflex, PBPK)."""

from __future__ import annotations

import jax.numpy as jnp
from catalogue import Entry

import twinjax as tj
from twinjax.models import circulation, pbpk, pk

# rk4_dt=None below: fixed-step RK4 at dt = 0.01 s is beyond the stability limit of the
# open-valve dynamics (eigenvalues ~ 500 /s); the adaptive methods are still compared.
_BATCH = (
    "batch and single runs differ at ~1e-8 relative (far below the solver tolerance 1e-6): "
    "vectorised and scalar transcendental functions round differently and the valve switches "
    "amplify it through the adaptive step choice; tests/test_circulation.py::"
    "test_batch_equals_single_to_tolerance checks batching at 1e-6"
)
_TWO_BEATS = jnp.linspace(0.0, 2.0, 21)  # s, two beats at 60 bpm

ENTRIES = [
    Entry(
        "circulation",
        circulation.Circulation(),
        None,
        output="p_AR",
        times=_TWO_BEATS,
        grad_params=("R_AR_SYS", "EA_LV", "HR"),
        rk4_dt=None,
        skip={
            "test_batch_equals_single_and_no_recompile": _BATCH,
        },
        tight_rtol=1e-12,
        tight_atol=1e-12,
    ),
    Entry(
        "circulation-baroreflex",
        circulation.Circulation(baroreflex=True),
        None,
        output="p_AR",
        times=_TWO_BEATS,
        grad_params=("C_AR_SYS", "EA_LV", "R_AR_SYS"),
        rk4_dt=None,
        skip={
            "test_batch_equals_single_and_no_recompile": _BATCH,
        },
        tight_rtol=1e-12,
        tight_atol=1e-12,
    ),
    Entry(
        "pbpk-oral",
        pbpk.MinimalPBPK(),
        "lumen",
        dict(CLint=30.0, fu=0.3, Kp_rest=3.0),
        grad_params=("CLint", "fu", "KA", "CO", "f_liver"),
    ),
    Entry("pbpk-iv", pbpk.MinimalPBPK(), "ven", dose_dur=0.5, grad_params=("CLint", "GFR")),
    Entry(
        "pk-circulation",
        tj.couple(
            {"pk": pk.one_compartment(), "circ": circulation.Circulation()},
            [tj.Link("pk.C", "circ.R_AR_SYS", "emax", {"Emax": -0.4, "EC50": 1.0})],
            time_unit="s",  # the PK (h) converted to the circulation's seconds
        ),
        "pk.central",
        {"pk.CL": 1800.0, "pk.V": 50.0},  # L/h (0.5 L/s)
        output="circ.p_AR",
        times=_TWO_BEATS,
        dose_time=0.33,
        grad_params=("circ.R_AR_SYS", "link0.EC50"),
        rk4_dt=None,
        skip={
            "test_batch_equals_single_and_no_recompile": _BATCH,
        },
        tight_rtol=1e-13,
        tight_atol=1e-13,
    ),
]
