"""The organ library: one module per organ system."""

from . import circulation as circulation
from . import ep as ep
from . import glucose as glucose
from . import pbpk as pbpk
from . import pd as pd
from . import pk as pk
from . import tmdd as tmdd
