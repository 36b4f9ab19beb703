"""Glucose-insulin models: the Bergman minimal model and the UVA/Padova T1D simulator."""

from ._bergman import IVGTT_TIMES as IVGTT_TIMES
from ._bergman import MinimalModel as MinimalModel
from ._bergman import ivgtt as ivgtt
from ._control import CGM as CGM
from ._control import PID as PID
from ._control import BasalBolus as BasalBolus
from ._control import ClosedLoopResult as ClosedLoopResult
from ._control import Controller as Controller
from ._control import Meals as Meals
from ._control import OpenLoop as OpenLoop
from ._control import SensedController as SensedController
from ._control import basal_rate as basal_rate
from ._control import daily_meals as daily_meals
from ._control import simulate_closed_loop as simulate_closed_loop
from ._metrics import outcomes as outcomes
from ._metrics import risk as risk
from ._uva_padova import PARAM_NAMES as PARAM_NAMES
from ._uva_padova import UvaPadova as UvaPadova
from ._uva_padova import basal_consistent as basal_consistent
from ._uva_padova import insulin_bolus as insulin_bolus
from ._uva_padova import load_patients as load_patients
from ._uva_padova import meal as meal
from ._uva_padova import patient_names as patient_names
from ._uva_padova import patient_params as patient_params
from ._uva_padova import therapy_params as therapy_params
from ._uva_padova import virtual_patients as virtual_patients
