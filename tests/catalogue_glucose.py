"""Catalogue entries of the glucose models (auto-discovered by ``tests/catalogue.py``)."""

from __future__ import annotations

import jax.numpy as jnp
from catalogue import Entry

from twinjax.models import glucose

ENTRIES = [
    # IVGTT: 0.3 g/kg over V = 1.7 dL/kg is a 176 mg/dL glucose bolus (here at 1.3 min,
    # off the save grid, so the dose-time gradient sees the jump). The threshold h is
    # below the glucose nadir: no kink in max(G - h, 0), so finite differences are smooth.
    Entry(
        "bergman-ivgtt",
        glucose.MinimalModel(),
        "G",
        dict(gamma=0.004, h=50.0),
        output="G",
        times=jnp.linspace(0.0, 180.0, 37),
        dose_amt=176.0,
        grad_params=("Sg", "Si", "p2"),
    ),
    # UVA/Padova open loop (basal infusion at u2ss), one 50 g meal eaten at 5 g/min.
    # The renal threshold ke2 is raised above the glucose peak: the kink of
    # max(Gp - ke2, 0) makes adaptive tight solves noisy at 1e-4 (finite differences).
    Entry(
        "uva-padova-meal",
        glucose.UvaPadova(),
        "qsto1",
        dict(ke2=600.0),
        output="G",
        times=jnp.linspace(0.0, 300.0, 21),
        dose_amt=50_000.0,
        dose_time=61.3,
        dose_dur=10.0,
        grad_params=("kabs", "Vmx", "kp3"),
    ),
]
