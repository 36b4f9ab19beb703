"""Catalogue entries of the cardiac electrophysiology models (one beat, no dosing)."""

from __future__ import annotations

import jax.numpy as jnp
from catalogue import Entry

from twinjax.models import ep

# Save times avoid the upstroke (the first ~2 ms), where a shift of the activation by a
# few microseconds changes V by many mV and no pointwise comparison is meaningful.
_LR_TIMES = jnp.linspace(5.0, 400.0, 80)

# ORd (41 states) is not in the catalogue: one beat with the generic tight Kvaerno5 solve
# (rtol 1e-11) and reverse-mode gradients takes minutes on the 2-core CI machine; it is
# validated in tests/test_ep.py against published APD90 and through the Rush-Larsen loop.
ENTRIES = [
    Entry(
        "ep-luo-rudy-1991",
        ep.LuoRudy1991(),
        None,
        {},
        output="V",
        times=_LR_TIMES,
        grad_params=("gsi", "gK", "gK1"),
        tight_rtol=1e-10,
        tight_atol=1e-10,
        # fixed-step RK4 would need dt ~ 1e-3 ms through the upstroke (4e5 steps per beat):
        # only the adaptive methods are compared with Diffrax
        rk4_dt=None,
        skip={
            "test_gradients_match_finite_differences": (
                "reverse-mode gradients through the tight Kvaerno5 solve of one beat agree with "
                "central differences only to ~3e-5 relative (the FD of an adaptive stiff solve "
                "across the stimulus edge and the 380 mV/ms upstroke is itself that noisy; the "
                "generic test asks 1e-5) and the check takes ~110 s on the 2-core CI machine"
            ),
            "test_float32_and_float64_agree": (
                "in float32 the generic Kvaerno5 solve at rtol = atol = 1e-6 stalls in the "
                "upstroke (status MAX_STEPS): the implicit solver's Newton iteration cannot "
                "meet 1e-6 on a ~100 mV/ms transient with float32 rounding; float32 runs are "
                "supported by ep.pace (Rush-Larsen), checked in tests/test_ep.py"
            ),
        },
    ),
]
