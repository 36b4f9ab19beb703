"""Plots: visual predictive checks (VPC, pcVPC), the goodness-of-fit panel and
eta-covariate plots (matplotlib, imported lazily)."""

from ._gof import eta_covariates as eta_covariates
from ._gof import gof_panel as gof_panel
from ._gof import pcvpc as pcvpc
from ._gof import pcvpc_table as pcvpc_table
from ._vpc import vpc as vpc
from ._vpc import vpc_table as vpc_table
