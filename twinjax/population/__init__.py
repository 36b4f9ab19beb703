"""Populations: demographics, covariate models, IIV, plausibility and VPop selection.

- :class:`Demographics` draws realistic adult covariates (age, sex, weight, height,
  serum creatinine; BMI, BSA, creatinine clearance).
- :class:`Population` combines a model's typical values, :class:`Covariate` effects
  (:class:`Power`, :class:`Linear`, :class:`Exponential`, :class:`Categorical`) and
  inter-individual variability with a full Omega; ``Population.sample(key, n)`` gives a
  :class:`Cohort`.
- :func:`plausible` and :func:`select_vpop` build plausible and virtual populations
  (Allen, Rieger & Musante 2016).
"""

from ._demographics import COLUMNS as COLUMNS
from ._demographics import NHANES_FEMALE as NHANES_FEMALE
from ._demographics import NHANES_MALE as NHANES_MALE
from ._demographics import Demographics as Demographics
from ._demographics import SexGroup as SexGroup
from ._demographics import body_surface_area as body_surface_area
from ._demographics import cockcroft_gault as cockcroft_gault
from ._demographics import patient_keys as patient_keys
from ._population import Categorical as Categorical
from ._population import Cohort as Cohort
from ._population import Covariate as Covariate
from ._population import Exponential as Exponential
from ._population import Linear as Linear
from ._population import Population as Population
from ._population import Power as Power
from ._vpop import VPopResult as VPopResult
from ._vpop import plausible as plausible
from ._vpop import select_vpop as select_vpop
