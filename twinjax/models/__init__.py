"""The organ library: one module per organ system."""

from . import ep as ep
from . import glucose as glucose
from . import pd as pd
from . import pk as pk
