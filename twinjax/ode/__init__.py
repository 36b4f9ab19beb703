"""Model layer: the abstract :class:`Model`, its parameter table and composition."""

from ._couple import Coupled as Coupled
from ._couple import Link as Link
from ._couple import couple as couple
from ._link_kinds import KINDS as KINDS
from ._link_kinds import LINK_KINDS as LINK_KINDS
from ._link_kinds import Direct as Direct
from ._link_kinds import Emax as Emax
from ._link_kinds import Linear as Linear
from ._link_kinds import LinkKind as LinkKind
from ._link_kinds import Sigmoid as Sigmoid
from ._link_kinds import UserLink as UserLink
from ._link_kinds import link_kind as link_kind
from ._model import Model as Model
from ._param import Param as Param
from ._param import State as State
from ._param import fraction as fraction
from ._param import positive as positive
from ._param import real as real
from ._piecewise import Piecewise as Piecewise
