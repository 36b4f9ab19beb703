"""Per-patient status codes: failures are data, not exceptions."""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """Outcome of one patient's simulation (``Result.status``)."""

    OK = 0
    MAX_STEPS = 1
    NONFINITE = 2
    STEP_TOO_SMALL = 3
    SOLVER_FAILED = 4

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.OK: "ok",
    Status.MAX_STEPS: "the solver reached max_steps before the end of a segment",
    Status.NONFINITE: "a state or output became NaN or infinite",
    Status.STEP_TOO_SMALL: "the step size fell below its minimum (the problem may be stiff)",
    Status.SOLVER_FAILED: "the solver failed (implicit solver did not converge)",
}
