"""Endpoint kinds: what an :class:`~twinjax.trial.Endpoint` computes, one class per kind.

A kind knows its formula (:meth:`EndpointKind.evaluate`) and what the rest of the
package asks about it: whether it is binary, whether it reads an output, single times,
a baseline, a threshold; whether it has a derivative in the parameters (local
sensitivities); how many saved times its window needs; the unit of its values; the
checks of the endpoint's fields that only it needs. Nothing outside this module tests
a kind by its name: the names (``"auc"``, ...) are what TOML files and reports write,
and :data:`KINDS` maps them to the classes.

A new kind is a subclass of :class:`EndpointKind` with a ``name`` and an
``evaluate``; it is used in Python (``Endpoint("x", MyKind(), output="C")``), not in
TOML (only the names in :data:`KINDS` are).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, final

import numpy as np

from ._check import Problems, boolean, ok

if TYPE_CHECKING:  # annotations only
    from ._endpoints import Endpoint


class Readings:
    """What a kind reads for one endpoint: the save grid and the endpoint's output.

    Attributes:
        times, outputs: as given to :meth:`Endpoint.compute` (``outputs`` maps a name to
            an ``(N, T)`` array).
        t: the save times ``(T,)`` as a numpy array.
        y: the endpoint's output ``(N, T)`` (a numpy array when ``xp`` is numpy).
        tw, yw: ``t`` and ``y`` restricted to the endpoint's window (default: all).
    """

    def __init__(self, endpoint: Endpoint, times, outputs: Mapping, xp=np):
        self.endpoint, self.times, self.outputs, self.xp = endpoint, times, outputs, xp
        self.t = np.asarray(times)

    @functools.cached_property
    def y(self):
        y = self.outputs[self.endpoint.output]
        return np.asarray(y) if self.xp is np else y

    @functools.cached_property
    def _window(self) -> np.ndarray:
        t, win = self.t, self.endpoint.window
        lo, hi = win if win is not None else (t[0], t[-1])
        return np.nonzero((t >= lo) & (t <= hi))[0]

    @property
    def tw(self) -> np.ndarray:
        return self.t[self._window]

    @property
    def yw(self):
        return self.y[:, self._window]

    def at(self, s: float):
        """The output at time ``s``: the saved value, else linear interpolation."""
        t, y = self.t, self.y
        i = int(np.searchsorted(t, s))
        if i < len(t) and t[i] == s:
            return y[:, i]
        i = int(np.clip(i, 1, len(t) - 1))
        a = (s - t[i - 1]) / (t[i] - t[i - 1])
        return (1 - a) * y[:, i - 1] + a * y[:, i]


@dataclasses.dataclass(frozen=True)
class EndpointKind(abc.ABC):
    """What an endpoint computes from the simulated trajectories (abstract).

    Subclasses set ``name`` and implement :meth:`evaluate`; the class attributes say
    what the kind needs and offers (the defaults suit a kind that reads one output over
    the endpoint's window, like ``cmax``).
    """

    #: the kind's name in TOML files and reports
    name: ClassVar[str]
    #: reads the endpoint's ``output``
    needs_output: ClassVar[bool] = True
    #: reads the output at the endpoint's ``time``
    needs_time: ClassVar[bool] = False
    #: also reads at ``baseline_time`` (a change from baseline)
    reads_baseline: ClassVar[bool] = False
    #: compares with the endpoint's ``threshold``
    needs_threshold: ClassVar[bool] = False
    #: the trial table gets the baseline as a column (the covariate of the ANCOVA)
    baseline_covariate: ClassVar[bool] = False
    #: has a derivative in the parameters (local sensitivities); not piecewise constant
    smooth: ClassVar[bool] = False
    #: saved times its window must hold
    min_window_saves: ClassVar[int] = 1

    def binary(self, endpoint: Endpoint) -> bool:
        """Whether the endpoint's values are events (0/1) rather than measurements."""
        return False

    def read_times(self, endpoint: Endpoint) -> list[float]:
        """The single times it reads the output at (none for window kinds)."""
        return []

    def unit(self, endpoint: Endpoint, output_unit: str | None, time_unit: str | None):
        """The unit of its (non-binary) values from the output's and the time's."""
        return output_unit

    def check_fields(self, f: Mapping, vals: Mapping, where: str, label: str, probs: Problems):
        """Add the problems of the endpoint's fields that only this kind has.

        ``f`` are the raw fields, ``vals`` the checked numbers (``time``,
        ``baseline_time``, ``threshold``, ``low``, ``high``; INVALID when wrong).
        """
        return None  # by default: none beyond the common checks

    def compute(self, endpoint: Endpoint, times, outputs: Mapping, xp: Any = np):
        """Per-patient values ``(N,)`` from save ``times (T,)`` and ``outputs (N, T)``.

        ``xp`` is the array module (``numpy``, or ``jax.numpy`` for a derivative of a
        ``smooth`` kind).
        """
        return self.evaluate(endpoint, Readings(endpoint, times, outputs, xp), xp)

    @abc.abstractmethod
    def evaluate(self, endpoint: Endpoint, r: Readings, xp: Any = np):
        """The formula: per-patient values ``(N,)`` from the :class:`Readings`."""


def _change(endpoint: Endpoint, r: Readings, xp):
    assert endpoint.time is not None  # checked by Endpoint (needs_time)
    base = r.at(endpoint.baseline_time)
    ch = r.at(endpoint.time) - base
    if endpoint.percent:
        ch = 100.0 * ch / xp.where(base != 0, base, xp.nan)
    return ch


@final
@dataclasses.dataclass(frozen=True)
class Value(EndpointKind):
    """The output at ``time`` (linear interpolation on the save grid)."""

    name: ClassVar[str] = "value"
    needs_time: ClassVar[bool] = True
    smooth: ClassVar[bool] = True

    def read_times(self, endpoint):
        return [endpoint.time]

    def evaluate(self, endpoint, r, xp=np):
        assert endpoint.time is not None  # checked by Endpoint (needs_time)
        return r.at(endpoint.time)


@final
@dataclasses.dataclass(frozen=True)
class Change(EndpointKind):
    """Value at ``time`` minus value at ``baseline_time`` (``percent=True``: percent)."""

    name: ClassVar[str] = "change"
    needs_time: ClassVar[bool] = True
    reads_baseline: ClassVar[bool] = True
    baseline_covariate: ClassVar[bool] = True
    smooth: ClassVar[bool] = True

    def read_times(self, endpoint):
        return [endpoint.time, endpoint.baseline_time]

    def unit(self, endpoint, output_unit, time_unit):
        return "%" if endpoint.percent else output_unit

    def evaluate(self, endpoint, r, xp=np):
        return _change(endpoint, r, xp)


@final
@dataclasses.dataclass(frozen=True)
class Cmax(EndpointKind):
    """Maximum over ``window``."""

    name: ClassVar[str] = "cmax"
    smooth: ClassVar[bool] = True

    def evaluate(self, endpoint, r, xp=np):
        return r.yw.max(axis=1)


@final
@dataclasses.dataclass(frozen=True)
class Tmax(EndpointKind):
    """Saved time of the maximum over ``window``."""

    name: ClassVar[str] = "tmax"

    def unit(self, endpoint, output_unit, time_unit):
        return time_unit

    def evaluate(self, endpoint, r, xp=np):
        return r.tw[np.argmax(r.yw, axis=1)]


@final
@dataclasses.dataclass(frozen=True)
class AUC(EndpointKind):
    """Trapezoidal area under the output over ``window``."""

    name: ClassVar[str] = "auc"
    smooth: ClassVar[bool] = True
    min_window_saves: ClassVar[int] = 2

    def unit(self, endpoint, output_unit, time_unit):
        return None if output_unit is None or time_unit is None else f"{output_unit}·{time_unit}"

    def evaluate(self, endpoint, r, xp=np):
        if xp is np:
            return np.trapezoid(r.yw, r.tw, axis=1)
        yw, dt = r.yw, np.diff(r.tw)  # the same sum, written for any array module
        return xp.sum(0.5 * (yw[:, 1:] + yw[:, :-1]) * dt[None, :], axis=1)


@final
@dataclasses.dataclass(frozen=True)
class Ctrough(EndpointKind):
    """Minimum over ``window`` (e.g. the last dosing interval)."""

    name: ClassVar[str] = "ctrough"
    smooth: ClassVar[bool] = True

    def evaluate(self, endpoint, r, xp=np):
        return r.yw.min(axis=1)


@final
@dataclasses.dataclass(frozen=True)
class TimeInRange(EndpointKind):
    """Fraction of the saved times in ``window`` with ``low <= output <= high``."""

    name: ClassVar[str] = "time_in_range"

    def unit(self, endpoint, output_unit, time_unit):
        return "fraction of time"

    def check_fields(self, f, vals, where, label, probs):
        if vals["low"] is None or vals["high"] is None:
            probs.add(where, f"{label}: time_in_range needs low and high")
        elif ok(vals["low"], vals["high"]) and vals["low"] > vals["high"]:
            probs.add(where, f"{label}: time_in_range needs low <= high")

    def evaluate(self, endpoint, r, xp=np):
        yw = r.yw
        return np.mean((yw >= endpoint.low) & (yw <= endpoint.high), axis=1)


@final
@dataclasses.dataclass(frozen=True)
class Responder(EndpointKind):
    """Change (absolute or percent) beyond ``threshold`` in ``direction`` (``"below"``:
    a decrease to at most ``threshold``)."""

    name: ClassVar[str] = "responder"
    needs_time: ClassVar[bool] = True
    reads_baseline: ClassVar[bool] = True
    needs_threshold: ClassVar[bool] = True

    def binary(self, endpoint):
        return True

    def read_times(self, endpoint):
        return [endpoint.time, endpoint.baseline_time]

    def evaluate(self, endpoint, r, xp=np):
        ch = _change(endpoint, r, xp)
        thr = endpoint.threshold
        return ch <= thr if endpoint.direction == "below" else ch >= thr


@final
@dataclasses.dataclass(frozen=True)
class Safety(EndpointKind):
    """The output crosses ``threshold`` in ``direction`` at any saved time in ``window``
    (e.g. hypotension: MAP below 65 mmHg)."""

    name: ClassVar[str] = "safety"
    needs_threshold: ClassVar[bool] = True

    def binary(self, endpoint):
        return True

    def evaluate(self, endpoint, r, xp=np):
        if endpoint.direction == "below":
            return np.any(r.yw < endpoint.threshold, axis=1)
        return np.any(r.yw > endpoint.threshold, axis=1)


@final
@dataclasses.dataclass(frozen=True)
class Custom(EndpointKind):
    """``fn(times, outputs) -> (N,)`` with ``outputs`` a dict of ``(N, T)`` arrays
    (Python API only); ``binary_custom`` says if it returns events."""

    name: ClassVar[str] = "custom"
    needs_output: ClassVar[bool] = False
    smooth: ClassVar[bool] = True  # as smooth as fn: the user's choice

    def binary(self, endpoint):
        return bool(endpoint.binary_custom)

    def check_fields(self, f, vals, where, label, probs):
        if not callable(f.get("fn")):
            probs.add(where, f"{label}: a custom endpoint needs fn(times, outputs)")
        boolean(f.get("binary_custom", False), f"{where}.binary_custom", probs)

    def evaluate(self, endpoint, r, xp=np):
        assert endpoint.fn is not None  # checked by Endpoint
        return endpoint.fn(r.times, r.outputs)


#: The kinds a TOML file (or a string ``kind=``) may name: ``{name: class}``.
KINDS: dict[str, type[EndpointKind]] = {
    cls.name: cls
    for cls in (Value, Change, Cmax, Tmax, AUC, Ctrough, TimeInRange, Responder, Safety, Custom)
}

#: The names of the kinds with a derivative in the parameters.
SMOOTH_KINDS: tuple[str, ...] = tuple(n for n, cls in KINDS.items() if cls.smooth)


def is_kind(x) -> bool:
    """Whether ``x`` is an :class:`EndpointKind` instance or subclass."""
    return isinstance(x, EndpointKind) or (isinstance(x, type) and issubclass(x, EndpointKind))


def endpoint_kind(x) -> EndpointKind:
    """``x`` as an :class:`EndpointKind` instance: an instance, a subclass (made with no
    arguments) or a name in :data:`KINDS`.

    Raises:
        ValueError: an unknown name (the message lists the allowed ones).
        TypeError: anything else.
    """
    if isinstance(x, EndpointKind):
        return x
    if isinstance(x, type) and issubclass(x, EndpointKind):
        if inspect.isabstract(x):
            raise TypeError(f"kind {x.__name__} is abstract: give a concrete EndpointKind")
        return x()
    if isinstance(x, str):
        if x not in KINDS:
            raise ValueError(f"kind {x!r} unknown; allowed: {list(KINDS)}")
        return KINDS[x]()
    raise TypeError(
        f"kind must be an EndpointKind or one of the names {list(KINDS)}, got {type(x).__name__}"
    )
