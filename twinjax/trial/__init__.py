"""Trial layer: arms, endpoints, statistics, replicate trials and the report."""

from ._arms import Arm as Arm
from ._arms import Inclusion as Inclusion
from ._arms import Sensitivity as Sensitivity
from ._check import SpecError as SpecError
from ._endpoints import KINDS as KINDS
from ._endpoints import Endpoint as Endpoint
from ._report import figure_bands as figure_bands
from ._safety import SafetyTrial as SafetyTrial
from ._trial import Trial as Trial
from ._trial import TrialResult as TrialResult
from ._variability import Dropout as Dropout
from ._variability import MeasurementError as MeasurementError
from ._variability import OccasionVariability as OccasionVariability
from ._variability import PlaceboResponse as PlaceboResponse
from ._variability import Variability as Variability
