"""Plots: visual predictive checks (VPC) and more (matplotlib, imported lazily)."""

from ._vpc import vpc as vpc
from ._vpc import vpc_table as vpc_table
