"""twinjax: a GPU-accelerated, differentiable digital-twin engine.

Organ models are JAX ODE systems; a virtual cohort is a batch of parameter sets
simulated in one compiled run; a twin is one parameter set fitted to one patient.
"""

from . import calibrate as calibrate
from . import data as data
from . import models as models
from . import plot as plot
from . import population as population
from . import sensitivity as sensitivity
from . import trial as trial
from .calibrate import FitResult as FitResult
from .calibrate import fit as fit
from .calibrate import optimise_dose as optimise_dose
from .data import Dataset as Dataset
from .data import DatasetError as DatasetError
from .data import read_nonmem as read_nonmem
from .dosing import Dose as Dose
from .dosing import Regimen as Regimen
from .dosing import Reset as Reset
from .model import Link as Link
from .model import Model as Model
from .model import Param as Param
from .model import Piecewise as Piecewise
from .model import State as State
from .model import couple as couple
from .population import Cohort as Cohort
from .population import Population as Population
from .solve import Result as Result
from .solve import Status as Status
from .solve import simulate as simulate
from .solve import simulate_cohort as simulate_cohort
from .solve import solvers as solvers
from .trial import Arm as Arm
from .trial import Endpoint as Endpoint
from .trial import Trial as Trial

__version__ = "0.1.0"
