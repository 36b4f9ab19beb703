"""Parameters and states: the validated tables that define a model's values."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

Transform = Literal["log", "logit", "identity"]

_TRANSFORMS = ("log", "logit", "identity")


@dataclasses.dataclass(frozen=True)
class Param:
    """One model parameter: its default value, unit, bounds, transform and source.

    Arguments:
        name: the parameter's name as written in the model's equations (``"CL"``).
        value: the default (typical) value.
        unit: the unit, e.g. ``"L/h"``. Dimensionless parameters use ``"1"``.
        lower, upper: the closed interval of admissible values. A log-transformed
            parameter's default must lie above ``lower`` (``log(x - lower)`` is finite
            there); :meth:`interval` and :meth:`bound_error` write the interval with an
            open lower end for checks that need this too.
        transform: map to an unconstrained coordinate used by calibration and IIV:
            ``"log"`` for positive quantities (``log(x - lower)``), ``"logit"`` for
            quantities bounded on both sides (fractions), ``"identity"`` otherwise.
        source: where the value comes from (paper, table, or "illustrative").
        doc: a short description.

    Raises:
        ValueError: if the table entry is inconsistent (empty unit, default outside
            the bounds, a log transform with an infinite or missing lower bound, a
            logit transform without two finite bounds).
    """

    name: str
    value: float
    unit: str
    lower: float = -math.inf
    upper: float = math.inf
    transform: Transform = "identity"
    source: str = ""
    doc: str = ""

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"Param name must be a non-empty string, got {self.name!r}")
        if not self.unit:
            raise ValueError(
                f"Param {self.name!r} has no unit; use '1' for dimensionless parameters"
            )
        if self.transform not in _TRANSFORMS:
            raise ValueError(
                f"Param {self.name!r}: transform {self.transform!r} is not one of {_TRANSFORMS}"
            )
        if not self.lower <= self.upper:
            raise ValueError(f"Param {self.name!r}: lower {self.lower} > upper {self.upper}")
        err = self.bound_error(self.value)
        if err:
            raise ValueError(f"Param {self.name!r}: default {self.value} {self.unit} {err}")
        if self.transform == "log":
            if not math.isfinite(self.lower):
                raise ValueError(f"Param {self.name!r}: log transform needs a finite lower bound")
            err = self.bound_error(self.value, open_lower=True)
            if err:
                raise ValueError(
                    f"Param {self.name!r}: default {self.value} {self.unit} {err} "
                    "(a log transform needs a value above the lower bound)"
                )
        if self.transform == "logit":
            if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
                raise ValueError(f"Param {self.name!r}: logit transform needs two finite bounds")

    def replace(self, **changes) -> Param:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def interval(self, *, open_lower: bool = False) -> str:
        """The admissible values in interval notation: ``"[0, 100000]"``, ``"(0, inf)"``.

        Arguments:
            open_lower: exclude the lower bound (``"("``), as a check that needs a value
                strictly above it (a log transform's typical value) does.
        """
        left = "(" if open_lower or self.lower == -math.inf else "["
        right = ")" if self.upper == math.inf else "]"
        return f"{left}{_num(self.lower)}, {_num(self.upper)}{right}"

    def bound_error(self, value, *, open_lower: bool = False) -> str | None:
        """Why ``value`` (a number) is not admissible, or None if it is.

        The text continues a sentence naming the value, e.g. ``"'V' = -3.0 "`` +
        ``"is outside its bounds [0, 100000] L: it must be >= 0"``; it gives the interval
        (see :meth:`interval`) and the bound that is violated.
        """
        v = float(value)
        if math.isnan(v):
            reason = "it is NaN"
        elif v < self.lower or (open_lower and v == self.lower):
            reason = f"it must be {'>' if open_lower else '>='} {_num(self.lower)}"
        elif v > self.upper:
            reason = f"it must be <= {_num(self.upper)}"
        else:
            return None
        unit = "" if self.unit == "1" else f" {self.unit}"
        return f"is outside its bounds {self.interval(open_lower=open_lower)}{unit}: {reason}"

    def describe(self) -> str:
        return f"{self.name} = {self.value} {self.unit} in {self.interval()}"


def _num(x: float) -> str:
    """A bound as written in messages: ``0``, ``100000``, ``0.5``, ``1e-07``, ``inf``."""
    x = float(x)
    if math.isfinite(x) and x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


@dataclasses.dataclass(frozen=True)
class State:
    """One state variable of a model: its name, unit and meaning."""

    name: str
    unit: str
    doc: str = ""
    cumulative: bool = False
    """A cumulative quantity (amount eliminated, AUC): it has no periodic steady
    state and is left as it is when steady-state dosing sets the other states."""

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"State name must be a non-empty string, got {self.name!r}")
        if not self.unit:
            raise ValueError(f"State {self.name!r} has no unit; use '1' for dimensionless states")


def positive(name, value, unit, *, lower=0.0, upper=math.inf, source="", doc="") -> Param:
    """A log-transformed positive parameter (clearance, volume, rate constant)."""
    return Param(name, value, unit, lower, upper, "log", source, doc)


def fraction(name, value, *, lower=0.0, upper=1.0, unit="1", source="", doc="") -> Param:
    """A logit-transformed parameter bounded on both sides (bioavailability, fractions)."""
    return Param(name, value, unit, lower, upper, "logit", source, doc)


def real(name, value, unit, *, lower=-math.inf, upper=math.inf, source="", doc="") -> Param:
    """An untransformed parameter."""
    return Param(name, value, unit, lower, upper, "identity", source, doc)
