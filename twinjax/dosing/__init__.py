"""Dosing layer: NONMEM-style doses and regimens compiled to padded event arrays."""

from ._regimen import Dose as Dose
from ._regimen import EventTable as EventTable
from ._regimen import Regimen as Regimen
from ._regimen import Reset as Reset
from ._regimen import compile_regimens as compile_regimens
