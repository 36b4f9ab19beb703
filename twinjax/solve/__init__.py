"""Solve layer: the event engine and its integrator families."""

from . import solvers as solvers
from ._base import AbstractSolver as AbstractSolver
from ._cohort import simulate_cohort as simulate_cohort
from ._cohort_result import CohortResult as CohortResult
from ._cohort_store import StoreRepairWarning as StoreRepairWarning
from ._controlled import ControlledRun as ControlledRun
from ._controlled import ControllerHook as ControllerHook
from ._controlled import Inputs as Inputs
from ._controlled import InputSchedule as InputSchedule
from ._controlled import run_controlled as run_controlled
from ._controlled import simulate_controlled as simulate_controlled
from ._engine import stack_state as stack_state
from ._engine import vector_field as vector_field
from ._reductions import StepReduction as StepReduction
from ._reductions import hermite_extrema as hermite_extrema
from ._result import Result as Result
from ._simulate import simulate as simulate
from ._status import Status as Status
from ._store import StoreCorruptError as StoreCorruptError
from ._store import StoreError as StoreError
from ._store import StoreLockedError as StoreLockedError
