"""twinjax: a GPU-accelerated, differentiable digital-twin engine.

Organ models are JAX ODE systems; a virtual cohort is a batch of parameter sets
simulated in one compiled run; a twin is one parameter set fitted to one patient.

The trial, sensitivity and plotting layers (``twinjax.trial``, ``twinjax.sensitivity``,
``twinjax.plot``, and ``Trial``, ``Arm``, ``Endpoint``) are imported on first use: a
process that only fits and forecasts does not pay for them (nor for SciPy's statistics
they import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import calibrate as calibrate
from . import data as data
from . import models as models
from . import population as population
from ._compile_cache import enable_compilation_cache as enable_compilation_cache
from .calibrate import FitResult as FitResult
from .calibrate import fit as fit
from .calibrate import optimise_dose as optimise_dose
from .data import Dataset as Dataset
from .data import DatasetError as DatasetError
from .data import read_nonmem as read_nonmem
from .dosing import Dose as Dose
from .dosing import Regimen as Regimen
from .dosing import Reset as Reset
from .ode import Link as Link
from .ode import Model as Model
from .ode import Param as Param
from .ode import Piecewise as Piecewise
from .ode import State as State
from .ode import couple as couple
from .population import Cohort as Cohort
from .population import Population as Population
from .solve import Result as Result
from .solve import Status as Status
from .solve import simulate as simulate
from .solve import simulate_cohort as simulate_cohort
from .solve import solvers as solvers

if TYPE_CHECKING:
    from . import plot as plot
    from . import sensitivity as sensitivity
    from . import trial as trial
    from .trial import Arm as Arm
    from .trial import Endpoint as Endpoint
    from .trial import Trial as Trial

__version__ = "0.1.0"

# imported on first use: {attribute: (submodule, name in it or None for the module)}
_LAZY = {
    "plot": ("plot", None),
    "sensitivity": ("sensitivity", None),
    "trial": ("trial", None),
    "Arm": ("trial", "Arm"),
    "Endpoint": ("trial", "Endpoint"),
    "Trial": ("trial", "Trial"),
}


def __getattr__(name: str):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        module = importlib.import_module(f".{mod}", __name__)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
