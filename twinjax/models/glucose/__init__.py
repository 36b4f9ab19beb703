"""Glucose-insulin models: the Bergman minimal model and the UVA/Padova T1D simulator."""

from ._uva_padova import UvaPadova as UvaPadova
from ._uva_padova import insulin_bolus as insulin_bolus
from ._uva_padova import load_patients as load_patients
from ._uva_padova import meal as meal
from ._uva_padova import patient_names as patient_names
from ._uva_padova import patient_params as patient_params
from ._uva_padova import therapy_params as therapy_params
