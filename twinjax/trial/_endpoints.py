"""Trial endpoints: per-patient numbers computed from simulated trajectories."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from ._check import INVALID, Problems, SpecError, boolean, describe, number, ok, string

KINDS = (
    "value",
    "change",
    "cmax",
    "tmax",
    "auc",
    "ctrough",
    "time_in_range",
    "responder",
    "safety",
    "custom",
)
BINARY_KINDS = ("responder", "safety")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A per-patient endpoint.

    Arguments:
        name: column name in the endpoint table.
        kind: one of

            - ``"value"``: the output at ``time`` (linear interpolation on the save grid);
            - ``"change"``: value at ``time`` minus value at ``baseline_time``
              (``percent=True`` for percent change);
            - ``"cmax"``, ``"tmax"``: maximum and time of maximum over ``window``;
            - ``"auc"``: trapezoidal area under the output over ``window``;
            - ``"ctrough"``: minimum over ``window`` (e.g. the last dosing interval);
            - ``"time_in_range"``: fraction of ``window`` with ``low <= output <= high``;
            - ``"responder"``: change (absolute or percent) beyond ``threshold`` in
              ``direction`` (``"below"``: a decrease to at most ``threshold``);
            - ``"safety"``: the output crosses ``threshold`` in ``direction`` at any
              time in ``window`` (e.g. hypotension: MAP below 65 mmHg);
            - ``"custom"``: ``fn(times, outputs) -> (N,)`` with ``outputs`` a dict of
              ``(N, T)`` arrays (Python API only).
        output: the model output (or state) it reads.
        time, baseline_time: times for ``value``/``change``/``responder``.
        window: ``(start, end)``; default the whole simulation.
        threshold, direction, percent, low, high: as above.
        fn: the function of a ``custom`` endpoint; ``binary`` says if it returns events.
    """

    name: str
    kind: str
    output: str | None = None
    time: float | None = None
    baseline_time: float = 0.0
    window: tuple[float, float] | None = None
    threshold: float | None = None
    direction: str = "below"
    percent: bool = False
    low: float | None = None
    high: float | None = None
    fn: Callable | None = None
    binary_custom: bool = False

    def __post_init__(self):
        probs = Problems()
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        check_endpoint_fields(fields, f"Endpoint({self.name!r})", probs)
        probs.check()

    @property
    def binary(self) -> bool:
        return self.kind in BINARY_KINDS or (self.kind == "custom" and self.binary_custom)

    def check(self, outputs: list[str], duration: float) -> None:
        """Raise ValueError if the endpoint names an unknown output or a time outside."""
        problems = self.problems(outputs, duration)
        if problems:
            raise SpecError(problems)

    def problems(self, outputs: list[str], duration: float) -> list[str]:
        """Unknown output, times outside the trial ``[0, duration]``: every problem."""
        where = f"endpoint {self.name!r}"
        out = []
        if self.kind != "custom" and self.output not in outputs:
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
        if self.kind == "custom":
            assert self.fn is not None  # checked in __post_init__
            return np.asarray(self.fn(times, outputs))
        assert self.output is not None  # checked in __post_init__
        y = np.asarray(outputs[self.output])
        t = np.asarray(times)
        lo, hi = self.window if self.window is not None else (t[0], t[-1])
        w = (t >= lo) & (t <= hi)
        tw, yw = t[w], y[:, w]

        def at(s):
            i = np.searchsorted(t, s)
            if i < len(t) and t[i] == s:
                return y[:, i]
            i = int(np.clip(i, 1, len(t) - 1))
            a = (s - t[i - 1]) / (t[i] - t[i - 1])
            return (1 - a) * y[:, i - 1] + a * y[:, i]

        if self.kind == "value":
            return at(self.time)
        if self.kind in ("change", "responder"):
            base = at(self.baseline_time)
            ch = at(self.time) - base
            if self.percent:
                ch = 100.0 * ch / np.where(base != 0, base, np.nan)
            if self.kind == "change":
                return ch
            return ch <= self.threshold if self.direction == "below" else ch >= self.threshold
        if self.kind == "cmax":
            return yw.max(axis=1)
        if self.kind == "tmax":
            return tw[np.argmax(yw, axis=1)]
        if self.kind == "auc":
            return np.trapezoid(yw, tw, axis=1)
        if self.kind == "ctrough":
            return yw.min(axis=1)
        if self.kind == "time_in_range":
            return np.mean((yw >= self.low) & (yw <= self.high), axis=1)
        # safety
        if self.direction == "below":
            return np.any(yw < self.threshold, axis=1)
        return np.any(yw > self.threshold, axis=1)


def check_endpoint_fields(f: Mapping, where: str, probs: Problems) -> None:
    """Check the fields of an :class:`Endpoint` (a dict of its arguments), every problem.

    ``where`` names it in messages (``[endpoints][2]`` from TOML, ``Endpoint('x')``).
    """
    name = string(f.get("name"), f"{where}.name", probs)
    label = f"endpoint {name!r}" if ok(name) else "endpoint"
    kind = string(f.get("kind"), f"{where}.kind", probs)
    if ok(kind) and kind not in KINDS:
        probs.add(f"{where}.kind", f"{label}: kind {kind!r} unknown; allowed: {list(KINDS)}")
        kind = INVALID
    output = f.get("output")
    if output is not None:
        output = string(output, f"{where}.output", probs)
    if kind == "custom":
        if not callable(f.get("fn")):
            probs.add(where, f"{label}: a custom endpoint needs fn(times, outputs)")
        boolean(f.get("binary_custom", False), f"{where}.binary_custom", probs)
    elif ok(kind) and output is None:
        probs.add(where, f"{label}: kind {kind!r} needs an output")
    vals = {}
    for k in ("time", "baseline_time", "threshold", "low", "high"):
        v = f.get(k, 0.0 if k == "baseline_time" else None)
        vals[k] = None if v is None else number(v, f"{where}.{k}", probs)
    if kind in ("value", "change", "responder") and vals["time"] is None:
        probs.add(where, f"{label}: kind {kind!r} needs a time")
    if kind in ("responder", "safety") and vals["threshold"] is None:
        probs.add(where, f"{label}: kind {kind!r} needs a threshold")
    direction = f.get("direction", "below")
    if direction not in ("below", "above"):
        probs.add(
            f"{where}.direction",
            f"{label}: direction must be 'below' or 'above', got {describe(direction)}",
        )
    boolean(f.get("percent", False), f"{where}.percent", probs)
    if kind == "time_in_range":
        if vals["low"] is None or vals["high"] is None:
            probs.add(where, f"{label}: time_in_range needs low and high")
        elif ok(vals["low"], vals["high"]) and vals["low"] > vals["high"]:
            probs.add(where, f"{label}: time_in_range needs low <= high")
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
