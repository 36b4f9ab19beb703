"""Cardiac electrophysiology: action potential models, pacing, drug block, populations.

- :class:`LuoRudy1991`: the Luo-Rudy 1991 ventricular model (8 states), small and
  fast, cross-checked against Myokit.
- :class:`ORd`: the O'Hara-Rudy 2011 human ventricular model (41 states; endo,
  epi and M cells).
- :func:`pace`: a batched second-order Rush-Larsen beat loop returning per-beat
  biomarkers (APD90/50/30, triangulation, resting and peak potential, max dV/dt,
  EAD and repolarisation-failure flags, qNet) without storing trajectories.
- :mod:`drugs <._drugs>`: multi-channel pore block and a table of CiPA reference
  compounds; :mod:`population <._population>`: populations of models and
  in-silico drug trials.
"""

from . import _drugs as drugs  # noqa: F401
from . import _population as population  # noqa: F401
from ._biomarkers import from_trace as from_trace
from ._cell import CellModel as CellModel
from ._luo_rudy import LuoRudy1991 as LuoRudy1991
from ._ord import ORd as ORd
from ._pacing import stimulus as stimulus
from ._solver import PacingResult as PacingResult
from ._solver import RushLarsen as RushLarsen
from ._solver import pace as pace
