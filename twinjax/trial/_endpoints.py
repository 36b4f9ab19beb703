"""Trial endpoints: per-patient numbers computed from simulated trajectories."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from ._check import Problems, SpecError, boolean, describe, number, ok, string
from ._endpoint_kinds import KINDS, EndpointKind, endpoint_kind, is_kind


@dataclasses.dataclass(frozen=True, init=False)
class Endpoint:
    """A per-patient endpoint.

    Arguments:
        name: column name in the endpoint table.
        kind: an :class:`~twinjax.trial.EndpointKind` (a class of
            ``twinjax.trial``, e.g. ``AUC()``; a subclass defines a new kind), or
            its name (as in TOML files; stored as the class):

            - ``Value()``, ``"value"``: the output at ``time`` (linear interpolation
              on the save grid);
            - ``Change()``, ``"change"``: value at ``time`` minus value at
              ``baseline_time`` (``percent=True`` for percent change);
            - ``Cmax()``, ``Tmax()``, ``"cmax"``, ``"tmax"``: maximum and time of
              maximum over ``window``;
            - ``AUC()``, ``"auc"``: trapezoidal area under the output over ``window``;
            - ``Ctrough()``, ``"ctrough"``: minimum over ``window`` (e.g. the last
              dosing interval);
            - ``TimeInRange()``, ``"time_in_range"``: fraction of ``window`` with
              ``low <= output <= high``;
            - ``Responder()``, ``"responder"``: change (absolute or percent) beyond
              ``threshold`` in ``direction`` (``"below"``: a decrease to at most
              ``threshold``);
            - ``Safety()``, ``"safety"``: the output crosses ``threshold`` in
              ``direction`` at any time in ``window`` (e.g. hypotension: MAP below
              65 mmHg);
            - ``Custom()``, ``"custom"``: ``fn(times, outputs) -> (N,)`` with
              ``outputs`` a dict of ``(N, T)`` arrays (Python API only).
        output: the model output (or state) it reads.
        time, baseline_time: times for ``value``/``change``/``responder``.
        window: ``(start, end)``; default the whole simulation.
        threshold, direction, percent, low, high: as above.
        fn: the function of a ``custom`` endpoint; ``binary`` says if it returns events.
    """

    name: str
    kind: EndpointKind
    output: str | None
    time: float | None
    baseline_time: float
    window: tuple[float, float] | None
    threshold: float | None
    direction: str
    percent: bool
    low: float | None
    high: float | None
    fn: Callable | None
    binary_custom: bool

    def __init__(
        self,
        name: str,
        kind: EndpointKind | type[EndpointKind] | str,
        output: str | None = None,
        time: float | None = None,
        baseline_time: float = 0.0,
        window: tuple[float, float] | None = None,
        threshold: float | None = None,
        direction: str = "below",
        percent: bool = False,
        low: float | None = None,
        high: float | None = None,
        fn: Callable | None = None,
        binary_custom: bool = False,
    ):
        fields = dict(
            name=name,
            kind=kind,
            output=output,
            time=time,
            baseline_time=baseline_time,
            window=window,
            threshold=threshold,
            direction=direction,
            percent=percent,
            low=low,
            high=high,
            fn=fn,
            binary_custom=binary_custom,
        )
        probs = Problems()
        check_endpoint_fields(fields, f"Endpoint({name!r})", probs)
        probs.check()
        fields["kind"] = endpoint_kind(kind)  # a name as its class, once
        for k, v in fields.items():
            object.__setattr__(self, k, v)

    @property
    def binary(self) -> bool:
        return self.kind.binary(self)

    def check(self, outputs: list[str], duration: float) -> None:
        """Raise ValueError if the endpoint names an unknown output or a time outside."""
        problems = self.problems(outputs, duration)
        if problems:
            raise SpecError(problems)

    def problems(self, outputs: list[str], duration: float) -> list[str]:
        """Unknown output, times outside the trial ``[0, duration]``: every problem."""
        where = f"endpoint {self.name!r}"
        out = []
        if self.kind.needs_output and self.output not in outputs:
            out.append(
                f"{where}: unknown output {self.output!r}; the model's outputs and states are "
                f"{outputs}"
            )
        for t in (self.time, self.baseline_time, *(self.window or ())):
            if t is not None and not (0.0 <= t <= duration):
                out.append(f"{where}: time {t} is outside the trial [0, {duration}]")
        return out

    def compute(self, times: np.ndarray, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per-patient values ``(N,)`` from save ``times (T,)`` and ``outputs (N, T)``."""
        return np.asarray(self.kind.compute(self, times, outputs))


def check_endpoint_fields(f: Mapping, where: str, probs: Problems) -> None:
    """Check the fields of an :class:`Endpoint` (a dict of its arguments), every problem.

    ``where`` names it in messages (``[endpoints][2]`` from TOML, ``Endpoint('x')``).
    """
    name = string(f.get("name"), f"{where}.name", probs)
    label = f"endpoint {name!r}" if ok(name) else "endpoint"
    kind = _kind(f.get("kind"), where, label, probs)
    output = f.get("output")
    if output is not None:
        output = string(output, f"{where}.output", probs)
    if kind is not None and kind.needs_output and output is None:
        probs.add(where, f"{label}: kind {kind.name!r} needs an output")
    vals = {}
    for k in ("time", "baseline_time", "threshold", "low", "high"):
        v = f.get(k, 0.0 if k == "baseline_time" else None)
        vals[k] = None if v is None else number(v, f"{where}.{k}", probs)
    if kind is not None and kind.needs_time and vals["time"] is None:
        probs.add(where, f"{label}: kind {kind.name!r} needs a time")
    if kind is not None and kind.needs_threshold and vals["threshold"] is None:
        probs.add(where, f"{label}: kind {kind.name!r} needs a threshold")
    direction = f.get("direction", "below")
    if direction not in ("below", "above"):
        probs.add(
            f"{where}.direction",
            f"{label}: direction must be 'below' or 'above', got {describe(direction)}",
        )
    boolean(f.get("percent", False), f"{where}.percent", probs)
    if kind is not None:
        kind.check_fields(f, vals, where, label, probs)
    window = f.get("window")
    if window is not None:
        ww = f"{where}.window"
        if isinstance(window, (str, Mapping)) or not isinstance(window, (tuple, list, np.ndarray)):
            probs.add(ww, f"{label}: window must be [start, end], got {describe(window)}")
        elif len(window) != 2:
            probs.add(ww, f"{label}: window must be [start, end], got {len(window)} values")
        else:
            lo, hi = (number(t, ww, probs) for t in window)
            if ok(lo, hi) and not lo < hi:
                probs.add(ww, f"{label}: window must be (start, end) with start < end")


def _kind(raw, where: str, label: str, probs: Problems) -> EndpointKind | None:
    """The endpoint's kind from an :class:`EndpointKind` (instance or subclass) or its
    name (TOML); None, with the problem added, when it is neither."""
    if is_kind(raw):
        try:
            return endpoint_kind(raw)
        except TypeError as err:
            probs.add(f"{where}.kind", f"{label}: {err}")
            return None
    name = string(raw, f"{where}.kind", probs)
    if not ok(name):
        return None
    if name not in KINDS:
        probs.add(f"{where}.kind", f"{label}: kind {name!r} unknown; allowed: {list(KINDS)}")
        return None
    return KINDS[name]()
