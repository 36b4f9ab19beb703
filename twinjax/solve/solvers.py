"""Integrator families behind :func:`twinjax.simulate`.

- :class:`Diffrax`: diffrax solvers vmapped over patients (general, stiff, reverse-mode
  adjoints); the reference.
- :class:`Ensemble`: twinjax's batched explicit Runge-Kutta over structure-of-arrays
  state with a per-patient adaptive step, in one compiled loop.
"""

from ._base import AbstractSolver as AbstractSolver
from ._diffrax import Diffrax as Diffrax
from ._ensemble import Ensemble as Ensemble
