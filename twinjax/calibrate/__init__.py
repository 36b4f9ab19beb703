"""Calibration: twins fitted to patients' data.

- :func:`fit` / :func:`fit_individual`: maximum a posteriori (Bayesian forecasting)
  fits of every subject of a dataset in one compiled, batched run, with Laplace
  standard errors, IPRED, IWRES and eta-shrinkage (:class:`FitResult`).
- :func:`fit_population`: FOCE-I population fits (theta, Omega, sigma) with standard
  errors and NONMEM-convention OFV (:class:`PopulationFitResult`).
- :class:`ErrorModel`: additive, proportional, combined and log residual errors; one per
  output (``error={output: ErrorModel}``, records tagged by ``DVID``) for joint fits
  of several outputs (e.g. PK/PD).
- Censored records (``CENS``/``BLQ``/``LLOQ`` columns or ``lloq=``): M3 / M4 likelihood
  in MAP and FOCE-I fits (``censoring=``).
- :func:`saem`: SAEM population fits (Kuhn & Lavielle), batched over subjects, with an
  importance-sampling OFV (:func:`importance_sampling_ofv`) comparable to FOCE-I's.
- :func:`covariance_step` (NONMEM's sandwich / R / S), :func:`profile_likelihood`,
  :func:`bootstrap` (resamples refitted together): uncertainty of FOCE-I fits.
- :func:`forecast` and :func:`optimise_dose`: use a fitted twin.
- :func:`sample_posterior`: individual full-Bayesian posteriors by NUTS (BlackJAX),
  every chain of every subject in one compiled run, with split-R-hat / ESS
  (:class:`PosteriorResult`); :func:`forecast_posterior` and
  :func:`optimise_dose_posterior` (probability of target attainment) use the draws.
- :func:`cwres`, :func:`simulate_replicates`, :func:`npde`: diagnostics (see also
  ``twinjax.plot.vpc``, ``gof_panel``, ``pcvpc``).
"""

from ._bootstrap import BootstrapResult as BootstrapResult
from ._bootstrap import bootstrap as bootstrap
from ._bootstrap import resample_counts as resample_counts
from ._covstep import CovarianceStep as CovarianceStep
from ._covstep import covariance_step as covariance_step
from ._diagnostics import cwres as cwres
from ._diagnostics import simulate_replicates as simulate_replicates
from ._forecast import DoseResult as DoseResult
from ._forecast import Forecast as Forecast
from ._forecast import forecast as forecast
from ._forecast import optimise_dose as optimise_dose
from ._map import FitData as FitData
from ._map import FitResult as FitResult
from ._map import fit_individual as fit_individual
from ._map import prepare_data as prepare_data
from ._nlme import PopulationFitResult as PopulationFitResult
from ._nlme import fit as fit
from ._nlme import fit_population as fit_population
from ._npde import NpdeResult as NpdeResult
from ._npde import npde as npde
from ._npde import npde_from_simulations as npde_from_simulations
from ._npde import npde_test as npde_test
from ._posterior import sample_posterior as sample_posterior
from ._posterior_diagnostics import ess_bulk as ess_bulk
from ._posterior_diagnostics import ess_tail as ess_tail
from ._posterior_diagnostics import split_rhat as split_rhat
from ._posterior_dosing import PosteriorDose as PosteriorDose
from ._posterior_dosing import optimise_dose_posterior as optimise_dose_posterior
from ._posterior_result import PosteriorResult as PosteriorResult
from ._posterior_result import forecast_posterior as forecast_posterior
from ._profile import Profile as Profile
from ._profile import plot_profile as plot_profile
from ._profile import profile_likelihood as profile_likelihood
from ._residual import ErrorModel as ErrorModel
from ._saem import ImportanceSamplingOFV as ImportanceSamplingOFV
from ._saem import SAEMResult as SAEMResult
from ._saem import importance_sampling_ofv as importance_sampling_ofv
from ._saem import saem as saem
from ._uncertainty import joint_posterior as joint_posterior
from ._uncertainty import posterior_samples as posterior_samples
