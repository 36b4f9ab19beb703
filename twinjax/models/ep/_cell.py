"""The abstract cardiac cell model: gates, other states, and named currents.

A cell model is a :class:`twinjax.Model` whose states split into *gates* (obeying
``dx/dt = (x_inf - x) / tau``, integrated exactly for frozen voltage by the
Rush-Larsen scheme) and *other* states (membrane potential ``V``, concentrations),
and which names its ionic currents so that biomarkers such as qNet can be reduced
per beat.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from ...ode import Model
from ._pacing import stimulus


class CellModel(Model):
    """Abstract base of the electrophysiology cell models.

    Final subclasses implement :meth:`evaluate` (one pass over the equations that
    returns gate steady states and time constants, derivatives of the other states,
    and the ionic currents), ``states``, ``params`` and ``init``. ``rhs`` and
    ``observe`` are derived from :meth:`evaluate` here.

    Class attributes:
        gates: names of the gate states (integrated by Rush-Larsen).
        qnet_currents: the currents summed in qNet (Dutta et al. 2017).
        time_unit: ``"ms"``.
    """

    gates: ClassVar[tuple[str, ...]] = ()
    qnet_currents: ClassVar[tuple[str, ...]] = ()
    stiff: ClassVar[bool] = True

    @abc.abstractmethod
    def evaluate(self, t, y: dict, p: dict) -> tuple[dict, dict, dict]:
        """Evaluate the equations once.

        Arguments:
            t: time (ms) within the pacing cycle (the stimulus is ``t mod BCL``).
            y: the state, one scalar or ``(N,)`` array per state name.
            p: the parameters.

        Returns:
            ``(gates, derivs, currents)``: ``{gate: (inf, tau)}`` for every gate,
            ``{state: dy/dt}`` for every other state, and ``{name: current}``
            including ``"Istim"`` and ``"Iion"`` (total ionic current).
        """

    def rhs(self, t, y, p, u):
        gates, d, _ = self.evaluate(t, y, p)
        out = dict(d)
        for g, (inf, tau) in gates.items():
            out[g] = (inf - y[g]) / tau
        return out

    def observe(self, t, y, p):
        _, _, cur = self.evaluate(t, y, p)
        out = {"V": y["V"] + 0.0 * cur["Iion"]}
        out.update(cur)
        out["qnet_current"] = sum(cur[k] for k in self.qnet_currents)
        return out

    @staticmethod
    def stimulus(t, p):
        """The stimulus current at ``t`` (see :func:`twinjax.models.ep.stimulus`)."""
        return stimulus(t, p)
