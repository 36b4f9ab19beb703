"""The organ library: one module per organ system."""

from . import pd as pd
from . import pk as pk
