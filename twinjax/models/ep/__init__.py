"""Cardiac electrophysiology: action potential models, pacing, drug block, populations.

- :class:`LuoRudy1991`: the Luo-Rudy 1991 ventricular model (8 states), small and
  fast, cross-checked against Myokit.
- :class:`ORd`: the O'Hara-Rudy 2011 human ventricular model (41 states; endo,
  epi and M cells).
- :class:`CiPAORd`: CiPAORdv1.0 (ORd with the dynamic hERG drug-binding Markov model,
  Li et al. 2017), paced by :func:`pace_cipa` (qNet per beat).
- :func:`pace`: a batched second-order Rush-Larsen beat loop returning per-beat
  biomarkers (APD90/50/30, triangulation, resting and peak potential, max dV/dt,
  EAD and repolarisation-failure flags, qNet) without storing trajectories;
  :func:`pace_to_steady_state`: beats until each cell's state repeats (the shared
  periodic-steady-state solver).
- :mod:`drugs <._drugs>`: multi-channel pore block and a table of CiPA reference
  compounds; :mod:`population <._population>`: populations of models and
  in-silico drug trials.
"""

from . import _cell_population as cell_population  # noqa: F401
from . import _drugs as drugs  # noqa: F401
from ._biomarkers import from_trace as from_trace
from ._cell import CellModel as CellModel
from ._cipa import CiPAORd as CiPAORd
from ._cipa import compound_params as cipa_compound_params  # noqa: F401
from ._cipa import pace_cipa as pace_cipa
from ._luo_rudy import LuoRudy1991 as LuoRudy1991
from ._ord import ORd as ORd
from ._pacing import stimulus as stimulus
from ._solver import PacingResult as PacingResult
from ._solver import RushLarsen as RushLarsen
from ._solver import pace as pace
from ._steady import pace_to_steady_state as pace_to_steady_state
