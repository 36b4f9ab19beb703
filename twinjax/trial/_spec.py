"""Trial specifications: strict validation of every value, all problems reported at once.

A specification (a TOML file, a nested dict, or the arguments of :class:`Trial`) is
checked completely before anything is simulated. Each problem names where it is, as
``[table].key`` for TOML (``[arms][1].placebo: expected a boolean (true/false), got
the string "false"``) or as the argument name from Python, and every problem found is
listed in one :class:`SpecError`.

The rules:

- types are exact: a boolean must be a TOML boolean (``true``/``false``, not
  ``"false"``), an integer a TOML integer (``7``, not ``7.9`` nor ``true``); a number
  may be written as an integer (``duration = 168``); strings are never converted;
- ranges: ``n_per_arm`` and ``n`` >= 2, ``seed`` in [0, 2**63), ``duration`` > 0 and
  finite, 0 < ``save_every`` <= ``duration`` dividing it into whole steps,
  0 < ``alpha`` < 1, ``replicates`` >= 1, ``power_sizes`` integers >= 2 and at most
  the smallest arm, ``rtol``/``atol`` > 0, endpoint times inside [0, ``duration``]
  with at least one saved time in each endpoint window;
- names: covariates (subgroups, inclusion criteria, covariate effects) must be
  covariates of the population, outputs and parameters those of the model, arm and
  endpoint names unique, and arm names safe as folder names (see
  :func:`arm_name_problem`).

Layout (everything is re-exported here, the one place the rest of twinjax imports
from): the checks of single values and the :class:`SpecError` are in ``_check.py``; the
arms, inclusion criteria and sensitivity settings with their field checks in
``_arms.py``; a whole trial checked against its model and population in
``_spec_trial.py`` (:func:`check_trial`); the ``[sensitivity]`` table in
``_spec_sensitivity.py``; the TOML layer (allowed keys, :func:`load_toml`,
:func:`trial_from_dict`) in ``_spec_toml.py``.
"""

from __future__ import annotations

from ._arms import Arm as Arm
from ._arms import Inclusion as Inclusion
from ._arms import Sensitivity as Sensitivity
from ._arms import check_arm as check_arm
from ._arms import check_inclusion as check_inclusion
from ._arms import check_sensitivity_fields as check_sensitivity_fields
from ._check import ARM_NAME_CHARS as ARM_NAME_CHARS
from ._check import ARM_NAME_MAX as ARM_NAME_MAX
from ._check import INVALID as INVALID
from ._check import MAX_SEED as MAX_SEED
from ._check import PY_LABELS as PY_LABELS
from ._check import RESERVED_COLUMNS as RESERVED_COLUMNS
from ._check import TOML_LABELS as TOML_LABELS
from ._check import Problems as Problems
from ._check import SpecError as SpecError
from ._check import arm_name_problem as arm_name_problem
from ._check import boolean as boolean
from ._check import describe as describe
from ._check import format_problems as format_problems
from ._check import integer as integer
from ._check import is_bool as is_bool
from ._check import is_int as is_int
from ._check import is_number as is_number
from ._check import listof as listof
from ._check import number as number
from ._check import ok as ok
from ._check import store_path as store_path
from ._check import string as string
from ._check import table as table
from ._check import unknown_keys as unknown_keys
from ._spec_sensitivity import SENSITIVITY_KEYS as SENSITIVITY_KEYS
from ._spec_sensitivity import SOBOL_KEYS as SOBOL_KEYS
from ._spec_sensitivity import check_sensitivity as check_sensitivity
from ._spec_sensitivity import sensitivity_from_toml as sensitivity_from_toml
from ._spec_toml import ARM_KEYS as ARM_KEYS
from ._spec_toml import COVARIATE_KEYS as COVARIATE_KEYS
from ._spec_toml import DOSE_KEYS as DOSE_KEYS
from ._spec_toml import ENDPOINT_KEYS as ENDPOINT_KEYS
from ._spec_toml import POPULATION_KEYS as POPULATION_KEYS
from ._spec_toml import SOLVERS as SOLVERS
from ._spec_toml import STATISTICS_KEYS as STATISTICS_KEYS
from ._spec_toml import TOP_KEYS as TOP_KEYS
from ._spec_toml import TRIAL_KEYS as TRIAL_KEYS
from ._spec_toml import known_covariates_for as known_covariates_for
from ._spec_toml import load_toml as load_toml
from ._spec_toml import trial_from_dict as trial_from_dict
from ._spec_trial import check_trial as check_trial
from ._spec_trial import covariate_text as covariate_text
from ._spec_trial import known_covariates as known_covariates
from ._spec_trial import param_problem as param_problem

__all__ = ["SpecError", "Problems"]
