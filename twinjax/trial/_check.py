"""The checking toolkit of trial specifications: one :class:`SpecError` listing every
problem, the :class:`Problems` collector, exact type and range checks of single values
(``boolean``, ``integer``, ``number``, ``string``, ``listof``, ``table``,
``unknown_keys``), arm names safe as folder names, and the labels that name each
argument in a message (from Python or from TOML).

It sits below everything else in ``trial/`` (endpoints, variability, arms, the
specification builder ``_spec.py``, the trial), which all report problems with it.
"""

from __future__ import annotations

import json
import math
import numbers
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SpecError", "Problems"]

MAX_SEED = 2**63 - 1
ARM_NAME_CHARS = " _-+.()%"
ARM_NAME_MAX = 100
RESERVED_COLUMNS = ("arm", "patient", "status")


class SpecError(ValueError):
    """A malformed trial specification (raised before any simulation).

    ``problems`` lists every problem found; the message shows them all.
    """

    def __init__(self, problems: str | Sequence[str], subject: str = "the specification"):
        if isinstance(problems, str):
            problems = [problems]
        self.problems: tuple[str, ...] = tuple(str(p) for p in problems)
        self.subject = subject
        super().__init__(format_problems(self.problems, subject))

    def __reduce__(self):
        return (type(self), (list(self.problems), self.subject))


def format_problems(problems: Sequence[str], subject: str = "the specification") -> str:
    if len(problems) == 1:
        return problems[0]
    lines = "\n".join(f"  - {p}" for p in problems)
    return f"{len(problems)} problems in {subject}:\n{lines}"


class Problems:
    """A collector of specification problems; :meth:`check` raises them as one SpecError."""

    def __init__(self):
        self.items: list[str] = []

    def add(self, where: str, msg: str) -> None:
        self.items.append(f"{where}: {msg}" if where else msg)

    def absorb(self, err: BaseException, where: str = "") -> None:
        """Add the problem(s) of an exception (a SpecError's list, else its text)."""
        for p in getattr(err, "problems", None) or [str(err)]:
            self.add(where, p)

    def __len__(self) -> int:
        return len(self.items)

    def check(self, subject: str = "the specification") -> None:
        if self.items:
            raise SpecError(self.items, subject)


class _Invalid:
    """The value of an entry that failed its check (later checks that need it skip)."""

    def __repr__(self):
        return "INVALID"


INVALID: Any = _Invalid()


# ============================================================================ value checks
def is_bool(v) -> bool:
    return isinstance(v, (bool, np.bool_))


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not is_bool(v)


def is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not is_bool(v)


def describe(v) -> str:
    """How a value reads in a message: ``the string "false"``, ``the number 7.9``."""
    if is_bool(v):
        return f"the boolean {'true' if v else 'false'}"
    if isinstance(v, str):
        return f"the string {json.dumps(v, ensure_ascii=False)}"
    if is_int(v):
        return f"the integer {int(v)}"
    if is_number(v):
        return f"the number {float(v)!r}"
    if v is None:
        return "nothing (None)"
    if isinstance(v, Mapping):
        return "a table"
    if isinstance(v, (list, tuple)):
        return f"a list of {len(v)} item(s)"
    return f"a {type(v).__name__}"


def boolean(v, where: str, probs: Problems):
    """A bool (True/False), or INVALID after adding a problem."""
    if is_bool(v):
        return bool(v)
    hint = ""
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "yes", "no", "on", "off"):
        hint = " (write true or false, without quotes)"
    elif is_int(v) and v in (0, 1):
        hint = " (write true or false)"
    probs.add(where, f"expected a boolean (true/false), got {describe(v)}{hint}")
    return INVALID


def _range_text(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"{'<' if hi_open else '<='} {hi:g}"


def _in_range(v, lo, hi, lo_open, hi_open) -> bool:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    if hi is not None and (v >= hi if hi_open else v > hi):
        return False
    return True


def integer(v, where: str, probs: Problems, *, lo=None, hi=None):
    """An int (a bool or a float is refused, never truncated), or INVALID."""
    if not is_int(v):
        hint = ""
        if is_number(v):
            hint = " (fractional values are not rounded)"
        elif isinstance(v, str):
            hint = " (write the number without quotes)"
        probs.add(where, f"expected an integer, got {describe(v)}{hint}")
        return INVALID
    v = int(v)
    if not _in_range(v, lo, hi, False, False):
        probs.add(where, f"must be {_range_text(lo, hi, False, False)}, got {v}")
        return INVALID
    return v


def number(
    v,
    where: str,
    probs: Problems,
    *,
    lo=None,
    hi=None,
    lo_open: bool = False,
    hi_open: bool = False,
    finite: bool = True,
):
    """A float (an int is accepted; a bool or a string is not), or INVALID."""
    if not is_number(v):
        hint = " (write the number without quotes)" if isinstance(v, str) else ""
        probs.add(where, f"expected a number, got {describe(v)}{hint}")
        return INVALID
    v = float(v)
    if math.isnan(v) or (finite and math.isinf(v)):
        probs.add(where, f"must be a finite number, got {v}")
        return INVALID
    if not _in_range(v, lo, hi, lo_open, hi_open):
        probs.add(where, f"must be {_range_text(lo, hi, lo_open, hi_open)}, got {v:g}")
        return INVALID
    return v


def string(v, where: str, probs: Problems, *, choices: Sequence[str] | None = None):
    """A non-empty str (optionally one of ``choices``), or INVALID."""
    if not isinstance(v, str):
        probs.add(where, f"expected a string, got {describe(v)}")
        return INVALID
    if not v.strip():
        probs.add(where, "must not be empty")
        return INVALID
    if choices is not None and v not in choices:
        probs.add(where, f"{v!r} is not one of {list(choices)}")
        return INVALID
    return v


def listof(v, where: str, probs: Problems, item, **kw):
    """A list whose items pass ``item(x, where[i], probs, **kw)``, or INVALID."""
    if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, (Sequence, np.ndarray)):
        probs.add(where, f"expected a list, got {describe(v)}")
        return INVALID
    n0 = len(probs)
    out = [item(x, f"{where}[{i}]", probs, **kw) for i, x in enumerate(v)]
    return INVALID if len(probs) > n0 else out


def table(v, where: str, probs: Problems):
    """A Mapping, or INVALID."""
    if not isinstance(v, Mapping):
        probs.add(where, f"expected a table, got {describe(v)}")
        return INVALID
    return v


def unknown_keys(d: Mapping, table_name: str, allowed, probs: Problems) -> None:
    """One problem per key of ``d`` not in ``allowed`` (``table_name`` like ``[trial]``)."""
    for k in d:
        if k not in allowed:
            probs.add(
                "", f"unknown key {k!r} in {table_name}; allowed keys: {sorted(map(str, allowed))}"
            )


def ok(*values) -> bool:
    """None of the values failed its check."""
    return not any(v is INVALID for v in values)


# ============================================================================ names
def arm_name_problem(name) -> str | None:
    """Why ``name`` cannot name an arm, or None.

    An arm's name is a folder of the results store (``OUT/results.zarr/NAME``), so it
    must be a plain, non-empty name: letters, digits, spaces and ``_-+.()%``, no path
    separator, no leading dot (so no ``..``), no leading or trailing space, no trailing
    dot, at most 100 characters.
    """
    if not isinstance(name, str):
        return f"expected a string, got {describe(name)}"
    if not name.strip():
        return "an arm needs a non-empty name"
    if "/" in name or "\\" in name:
        return f"{name!r}: an arm name must not contain a path separator (/ or \\)"
    if name.startswith(".") or ".." in name:
        return f"{name!r}: an arm name must not start with a dot nor contain '..'"
    if name != name.strip() or name.endswith("."):
        return f"{name!r}: an arm name must not start or end with a space, nor end with a dot"
    bad = sorted({c for c in name if not (c.isalnum() or c in ARM_NAME_CHARS)})
    if bad:
        return (
            f"{name!r}: characters {bad} are not allowed in an arm name (it names a folder); "
            f"use letters, digits, spaces and {ARM_NAME_CHARS.strip()}"
        )
    if len(name) > ARM_NAME_MAX:
        return f"an arm name has at most {ARM_NAME_MAX} characters, got {len(name)}"
    return None


def store_path(out, arm_name: str) -> pathlib.Path:
    """``out/results.zarr/<arm_name>``, refused (SpecError) unless it resolves inside."""
    root = (pathlib.Path(out) / "results.zarr").resolve()
    problem = arm_name_problem(arm_name)
    if problem is not None:
        raise SpecError(f"arm {arm_name!r}: {problem}")
    path = (root / arm_name).resolve()
    if path.parent != root:
        raise SpecError(
            f"arm {arm_name!r}: its results store {path} would be outside {root}; rename the arm"
        )
    return path


PY_LABELS = {
    "duration": "duration",
    "save_every": "save_every",
    "n_per_arm": "n_per_arm",
    "replicates": "replicates",
    "power_sizes": "power_sizes",
    "subgroup_covariates": "subgroup_covariates",
    "alpha": "alpha",
    "seed": "seed",
    "control": "control",
    "name": "name",
    "outputs": "outputs",
    "beat_times": "beat_times",
    "arms": "arms",
    "arm": "arms[{i}]",
    "endpoints": "endpoints",
    "endpoint": "endpoints[{i}]",
    "inclusion": "inclusion[{i}]",
    "covariate_effect": "population.covariates[{i}]",
    "variability": "variability",
    "var_error": "variability.errors[{i}]",
    "var_placebo": "variability.placebo[{i}]",
    "var_iov": "variability.iov[{i}]",
    "var_outcome": "variability.dropout.outcome",
    "sensitivity": "sensitivity",
    "sens.endpoint": "sensitivity.endpoint",
    "sens.arm": "sensitivity.arm",
    "sens.local": "sensitivity.local",
    "sens.parameters": "sensitivity.parameters",
    "sens.patients": "sensitivity.patients",
    "sens.sobol": "sensitivity.sobol",
    "sens.sobol_n": "sensitivity.sobol_n",
    "sens.sobol_seed": "sensitivity.sobol_seed",
    "sens.sobol_bootstrap": "sensitivity.sobol_bootstrap",
}

TOML_LABELS = {
    "duration": "[trial].duration",
    "save_every": "[trial].save_every",
    "n_per_arm": "[population].n_per_arm",
    "replicates": "[statistics].replicates",
    "power_sizes": "[statistics].power_sizes",
    "subgroup_covariates": "[statistics].subgroups",
    "alpha": "[statistics].alpha",
    "seed": "[trial].seed",
    "control": "[statistics].control",
    "name": "[trial].name",
    "outputs": "[trial].outputs",
    "beat_times": "[trial].beat_times",
    "arms": "[[arms]]",
    "arm": "[arms][{i}]",
    "endpoints": "[[endpoints]]",
    "endpoint": "[endpoints][{i}]",
    "inclusion": "[population.inclusion][{i}]",
    "covariate_effect": "[population.covariates][{i}]",
    "variability": "[variability]",
    "var_error": "[variability.error][{i}]",
    "var_placebo": "[variability.placebo][{i}]",
    "var_iov": "[variability.iov][{i}]",
    "var_outcome": "[variability.dropout].outcome",
    "sensitivity": "[sensitivity]",
    "sens.endpoint": "[sensitivity].endpoint",
    "sens.arm": "[sensitivity].arm",
    "sens.local": "[sensitivity].local",
    "sens.parameters": "[sensitivity].parameters",
    "sens.patients": "[sensitivity].patients",
    "sens.sobol": "[sensitivity.sobol].parameters",
    "sens.sobol_n": "[sensitivity.sobol].n",
    "sens.sobol_seed": "[sensitivity.sobol].seed",
    "sens.sobol_bootstrap": "[sensitivity.sobol].n_bootstrap",
}
