"""Pacing protocols: a periodic square stimulus current.

A stimulus is a time-dependent input. twinjax models read it from three parameters
(``BCL``, ``stim_amp``, ``stim_dur``) so that ``rhs(t, y, p, u)`` is self-contained
and works with the generic event engine (use ``solvers.Diffrax(dtmax=...)`` there,
smaller than the stimulus duration, or the step controller may jump over a pulse).
The beat loop of :func:`twinjax.models.ep.pace` instead integrates one beat at a
time in local beat time ``[0, BCL)`` and lands a step exactly on the end of the
pulse, so no step ever straddles a stimulus edge.
"""

from __future__ import annotations

import jax.numpy as jnp

from ...ode import Param
from ...ode._param import positive


def pacing_params(
    bcl: float = 1000.0, amp: float = 80.0, dur: float = 0.5, *, unit="A/F", source: str = ""
) -> tuple[Param, ...]:
    """The three pacing parameters shared by every cell model.

    Arguments:
        bcl: basic cycle length (ms); 1000 ms is 1 Hz.
        amp: stimulus amplitude (positive number; the current is ``-amp``, inward).
        dur: stimulus duration (ms).
        unit: unit of the amplitude (``"A/F"`` or ``"uA/cm^2"``).
        source: where the protocol comes from.

    Returns:
        ``(BCL, stim_amp, stim_dur)`` parameters.
    """
    return (
        positive(
            "BCL",
            bcl,
            "ms",
            lower=0.0,
            upper=1e5,
            source=source,
            doc="basic cycle length (pacing period)",
        ),
        positive(
            "stim_amp",
            amp,
            unit,
            lower=0.0,
            upper=1e3,
            source=source,
            doc="stimulus amplitude (the stimulus current is -stim_amp)",
        ),
        positive(
            "stim_dur",
            dur,
            "ms",
            lower=0.0,
            upper=100.0,
            source=source,
            doc="stimulus duration, from the start of each cycle",
        ),
    )


def stimulus(t, p):
    """The stimulus current at time ``t``: ``-stim_amp`` for ``t mod BCL < stim_dur``.

    Arguments:
        t: time (ms), scalar or broadcastable with the parameters.
        p: parameters with ``BCL``, ``stim_amp``, ``stim_dur``.

    Returns:
        The (inward, negative) stimulus current.
    """
    phase = jnp.mod(t, p["BCL"])
    return jnp.where(phase < p["stim_dur"], -p["stim_amp"], 0.0 * p["stim_amp"])
