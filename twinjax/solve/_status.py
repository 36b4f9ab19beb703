"""Per-patient status codes: failures are data, not exceptions.

How a failure gets its code (the same rules in ``solvers.Diffrax`` and
``solvers.Ensemble``, so the same failure has the same code whichever solver ran it):

1. A segment (the time between two events) that starts from a NaN or infinite state,
   or where the vector field is NaN or infinite at its start, is not integrated:
   ``NONFINITE`` (e.g. a volume of 0 in a PK model: ``C = A / V``).
2. Inside a segment a NaN or infinite trial step is rejected and the step shrunk,
   like a step with too large an error. If the patient then fails, the cause is
   ``NONFINITE`` when the last step tried was NaN or infinite; otherwise
   ``STEP_TOO_SMALL`` when a rejected step would shrink below
   ``hmin * max(|t|, 1)``, ``MAX_STEPS`` when the segment used up ``max_steps``,
   and ``SOLVER_FAILED`` for any other solver failure.
3. A patient's code is that of its first failing segment: once failed, it is not
   integrated further. A patient whose run succeeded but whose saved states are NaN
   or infinite is ``NONFINITE``.

A failed patient's states and outputs are NaN at every save time (``simulate``,
``simulate_cohort``); summaries over a cohort count and exclude failed patients.

Periodic steady states (``solve/_periodic.py``: the circulation's
``to_periodic_steady_state`` and ``steady_state_cohort``, the quasi-static twin's
trials) have one more code: ``NOT_CONVERGED``, a patient whose fixed-point iteration
(plain, Anderson or Newton) used up its iterations (beats) with its residual still
above the tolerance; a failed integration inside the iteration keeps its own code
(rules 1-3). Such a patient's per-beat outputs are NaN; its last iterate is kept as
its state (a start for another try).
"""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """Outcome of one patient's simulation (``Result.status``); see the module notes
    for which code a failure gets."""

    OK = 0
    MAX_STEPS = 1
    NONFINITE = 2
    STEP_TOO_SMALL = 3
    SOLVER_FAILED = 4
    NOT_CONVERGED = 5

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.OK: "ok",
    Status.MAX_STEPS: "the solver reached max_steps before the end of a segment",
    Status.NONFINITE: "a state or the vector field became NaN or infinite",
    Status.STEP_TOO_SMALL: "the step size fell below its minimum (the problem may be stiff)",
    Status.SOLVER_FAILED: "the solver failed (implicit solver did not converge)",
    Status.NOT_CONVERGED: (
        "the periodic steady state did not converge (its iteration reached the maximum "
        "number of beats with the residual above the tolerance)"
    ),
}
