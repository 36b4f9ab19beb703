"""Trial endpoints: per-patient numbers computed from simulated trajectories."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

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
        where = f"endpoint {self.name!r}"
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind {self.kind!r} unknown; allowed: {list(KINDS)}")
        if self.kind == "custom":
            if self.fn is None:
                raise ValueError(f"{where}: a custom endpoint needs fn(times, outputs)")
        elif not self.output:
            raise ValueError(f"{where}: kind {self.kind!r} needs an output")
        if self.kind in ("value", "change", "responder") and self.time is None:
            raise ValueError(f"{where}: kind {self.kind!r} needs a time")
        if self.kind in ("responder", "safety") and self.threshold is None:
            raise ValueError(f"{where}: kind {self.kind!r} needs a threshold")
        if self.direction not in ("below", "above"):
            raise ValueError(f"{where}: direction must be 'below' or 'above'")
        if self.kind == "time_in_range" and (self.low is None or self.high is None):
            raise ValueError(f"{where}: time_in_range needs low and high")
        if self.window is not None and not (
            len(self.window) == 2 and self.window[0] < self.window[1]
        ):
            raise ValueError(f"{where}: window must be (start, end) with start < end")

    @property
    def binary(self) -> bool:
        return self.kind in BINARY_KINDS or (self.kind == "custom" and self.binary_custom)

    def check(self, outputs: list[str], duration: float) -> None:
        """Raise ValueError if the endpoint names an unknown output or a time outside."""
        where = f"endpoint {self.name!r}"
        if self.kind != "custom" and self.output not in outputs:
            raise ValueError(
                f"{where}: unknown output {self.output!r}; the model's outputs and states are "
                f"{outputs}"
            )
        for t in (self.time, self.baseline_time, *(self.window or ())):
            if t is not None and not (0.0 <= t <= duration):
                raise ValueError(f"{where}: time {t} is outside the trial [0, {duration}]")

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
