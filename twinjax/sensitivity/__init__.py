"""Sensitivity analysis: which parameters drive an output or an endpoint.

- :func:`local`: local sensitivities ``dy/dtheta`` and normalised ones
  ``d log y / d log theta`` of an output (over time) or an endpoint to every
  parameter, per patient of a cohort, by forward-mode automatic differentiation
  (``jax.jacfwd``) in one compiled call; :meth:`LocalResult.plot` draws a tornado.
- :func:`sobol`: global first-order and total Sobol' indices of an endpoint over
  uniform parameter ranges: a Saltelli design on a scrambled Sobol' sequence, the
  model run on all ``n (k + 2)`` samples as one batched cohort, the Saltelli et al.
  (2010) first-order and Jansen (1999) total estimators, bootstrap intervals;
  :meth:`SobolResult.plot` draws the bars with their intervals.

See ``docs/sensitivity.md``.
"""

from ._local import LocalResult as LocalResult
from ._local import local as local
from ._sobol import SobolResult as SobolResult
from ._sobol import saltelli_sample as saltelli_sample
from ._sobol import sobol as sobol
from ._sobol import sobol_indices as sobol_indices
