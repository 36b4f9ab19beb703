"""Model layer: the abstract :class:`Model`, its parameter table and composition."""

from ._couple import LINK_KINDS as LINK_KINDS
from ._couple import Coupled as Coupled
from ._couple import Link as Link
from ._couple import couple as couple
from ._model import Model as Model
from ._param import Param as Param
from ._param import State as State
from ._param import fraction as fraction
from ._param import positive as positive
from ._param import real as real
from ._piecewise import Piecewise as Piecewise
