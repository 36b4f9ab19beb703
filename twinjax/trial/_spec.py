"""Trial specifications: strict validation of every value, all problems reported at once.

A specification (a TOML file, a nested dict, or the arguments of :class:`Trial`) is
checked completely before anything is simulated. Each problem names where it is, as
``[table].key`` for TOML (``[arms][1].placebo: expected a boolean (true/false), got
the string "false"``) or as the argument name from Python, and every problem found is
listed in one :class:`SpecError`.

The rules:

- types are exact: a boolean must be a TOML boolean (``true``/``false``, not
  ``"false"``), an integer a TOML integer (``7``, not ``7.9`` nor ``true``); a number
  may be written as an integer (``duration = 168``); strings are never converted;
- ranges: ``n_per_arm`` and ``n`` >= 2, ``seed`` in [0, 2**63), ``duration`` > 0 and
  finite, 0 < ``save_every`` <= ``duration`` dividing it into whole steps,
  0 < ``alpha`` < 1, ``replicates`` >= 1, ``power_sizes`` integers >= 2 and at most
  the smallest arm, ``rtol``/``atol`` > 0, endpoint times inside [0, ``duration``]
  with at least one saved time in each endpoint window;
- names: covariates (subgroups, inclusion criteria, covariate effects) must be
  covariates of the population, outputs and parameters those of the model, arm and
  endpoint names unique, and arm names safe as folder names (see
  :func:`arm_name_problem`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import pathlib
import tomllib
from collections.abc import Iterable, Mapping, Sequence
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


def known_covariates(population) -> tuple[str, ...] | None:
    """The covariate columns a population's cohorts have, or None if unknown.

    The :class:`~twinjax.population.Demographics` generator gives
    :data:`~twinjax.population.COLUMNS`; without a generator there are none; another
    generator may declare its ``columns``.
    """
    from ..population import COLUMNS, Demographics

    demo = getattr(population, "demographics", None)
    if demo is None:
        return ()
    if isinstance(demo, Demographics):
        return tuple(COLUMNS)
    cols = getattr(demo, "columns", None)
    return tuple(cols) if cols is not None else None


def _covariate_text(known) -> str:
    if not known:
        return "the population has no covariates (demographics off)"
    return f"the population's covariates are {list(known)}"


def param_problem(model, name: str, value) -> str | None:
    """Why ``value`` cannot be the model's parameter ``name`` (unknown, out of bounds), or None.

    Uses the model's own bounds check; a log-transformed parameter must also lie strictly
    above its lower bound (its unconstrained coordinate ``log(x - lower)`` is finite).
    """
    if name not in model.param_names:
        return f"unknown parameter {name!r}; the model's parameters are {list(model.param_names)}"
    if not is_number(value) or not math.isfinite(float(value)):
        return f"parameter {name!r}: expected a finite number, got {describe(value)}"
    try:
        model.check_bounds({name: float(value)})
    except (TypeError, ValueError) as err:
        return str(err)
    q = model.param(name)
    if q.transform == "log" and not float(value) > q.lower:
        return (
            f"parameter {name!r} = {float(value):g} must be greater than its lower bound "
            f"{q.lower:g} {q.unit}"
        )
    return None


# ============================================================================ arms, inclusion
def check_arm(name, regimen, n, placebo, params, where: str, probs: Problems) -> None:
    """The fields of an :class:`Arm` (``where``: ``[arms][1]`` or ``Arm('x')``)."""
    from ..dosing import Regimen

    p = arm_name_problem(name)
    if p is not None:
        probs.add(f"{where}.name", p)
    placebo = boolean(placebo, f"{where}.placebo", probs)
    if n is not None:
        integer(n, f"{where}.n", probs, lo=2)
    if regimen is not None and not isinstance(regimen, Regimen):
        probs.add(f"{where}.regimen", f"expected a Regimen or None, got {describe(regimen)}")
    if regimen is None and placebo is False:
        probs.add(where, f"arm {name!r} has no regimen; give doses or mark it placebo = true")
    if regimen is not None and placebo is True:
        probs.add(where, f"arm {name!r} is a placebo arm with doses; drop one or the other")
    if params is not None:
        if not isinstance(params, Mapping):
            probs.add(f"{where}.params", f"expected a table of numbers, got {describe(params)}")
        else:
            for k, v in params.items():
                number(v, f"{where}.params.{k}", probs)


def check_inclusion(minimum, maximum, covariate, output, where: str, probs: Problems) -> None:
    """The fields of an :class:`Inclusion` criterion (names are checked by the trial)."""
    lo = number(minimum, f"{where}.min", probs, finite=False)
    hi = number(maximum, f"{where}.max", probs, finite=False)
    if ok(lo, hi) and lo > hi:
        probs.add(where, f"min {lo:g} > max {hi:g}: no patient can be included")
    if covariate is not None:
        string(covariate, f"{where}.covariate", probs)
    if output is not None:
        string(output, f"{where}.output", probs)
    if (covariate is None) == (output is None):
        probs.add(where, "an inclusion criterion names exactly one covariate or output")


# ============================================================================ the trial
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


def check_trial(a: dict, probs: Problems, labels: Mapping[str, str], complete: bool = True):
    """Check the arguments of a :class:`Trial`; return them normalised.

    Arguments:
        a: ``model, population, arms, endpoints, inclusion`` (built objects) and the
            scalar arguments of ``Trial`` as given; INVALID marks an entry that already
            failed (its dependent checks are skipped).
        probs: where problems go.
        labels: how each argument is named in a message (:data:`PY_LABELS`,
            :data:`TOML_LABELS`).
        complete: False when some arms or endpoints were dropped for errors already
            reported (then checks on the whole set, e.g. the control's name, are skipped).

    Returns:
        A dict of the normalised values plus ``control``, ``beat_times`` and ``outputs``.
    """
    from ..model._model import Model
    from ._endpoints import Endpoint
    from ._trial import Arm, Inclusion

    out: dict[str, Any] = {}
    _check_numbers(a, out, probs, labels)
    _check_arms(a, out, probs, labels, complete, Arm)
    _check_parts(a, out, probs, labels, Endpoint, Inclusion)
    _check_covariates(a, out, probs, labels)
    _check_variability(a, out, probs, labels)
    out["beat_times"], out["outputs"] = (), ()
    if a["model"] is not INVALID and a["model"] is not None:
        if isinstance(a["model"], Model):  # its declared trial capabilities are read
            _check_model(a, out, probs, labels)
        else:
            probs.add("model", f"expected a twinjax Model, got {describe(a['model'])}")
    _check_sensitivity(a, out, probs, labels, complete)
    return out


def _check_numbers(a: dict, out: dict, probs: Problems, L: Mapping[str, str]) -> None:
    """Duration and save grid, sample sizes, statistics settings, seed and name."""
    duration = number(a["duration"], L["duration"], probs, lo=0, lo_open=True)
    save_every = number(a["save_every"], L["save_every"], probs, lo=0, lo_open=True)
    if ok(duration, save_every):
        ratio = duration / save_every
        k = round(ratio)
        if save_every > duration:
            probs.add(
                L["save_every"],
                f"{save_every:g} is longer than the trial (duration {duration:g})",
            )
            save_every = INVALID
        elif abs(ratio - k) > 1e-9 * max(1.0, ratio):
            probs.add(
                L["save_every"],
                f"{save_every:g} does not divide duration {duration:g} into whole steps "
                f"(duration / save_every = {ratio:.6g}); e.g. {duration / k:.6g}",
            )
            save_every = INVALID
    out["duration"], out["save_every"] = duration, save_every
    n_per_arm = integer(a["n_per_arm"], L["n_per_arm"], probs, lo=2)
    out["n_per_arm"] = n_per_arm
    out["replicates"] = integer(a["replicates"], L["replicates"], probs, lo=1)
    out["alpha"] = number(a["alpha"], L["alpha"], probs, lo=0, hi=1, lo_open=True, hi_open=True)
    out["seed"] = integer(a["seed"], L["seed"], probs, lo=0, hi=MAX_SEED)
    out["name"] = string(a["name"], L["name"], probs)
    sizes = listof(a["power_sizes"], L["power_sizes"], probs, integer, lo=2)
    if ok(sizes) and len(set(sizes)) != len(sizes):
        probs.add(L["power_sizes"], f"sizes must be unique, got {sizes}")
        sizes = INVALID
    out["power_sizes"] = sorted(sizes) if ok(sizes) else sizes
    subs = listof(a["subgroup_covariates"], L["subgroup_covariates"], probs, string)
    if ok(subs) and len(set(subs)) != len(subs):
        probs.add(L["subgroup_covariates"], f"covariates must be unique, got {subs}")
    out["subgroup_covariates"] = subs


def _check_arms(a: dict, out: dict, probs: Problems, L: Mapping[str, str], complete, Arm) -> None:
    """The arms (unique names), the control arm, power sizes against the arm sizes."""
    n_per_arm, sizes = out["n_per_arm"], out["power_sizes"]
    arms = a["arms"]
    if isinstance(arms, (str, Mapping)) or not isinstance(arms, Iterable):
        probs.add(L["arms"], f"expected a list of arms, got {describe(arms)}")
        arms = INVALID
    else:
        arms = list(arms)
        for i, arm in enumerate(arms):
            if not isinstance(arm, Arm):
                probs.add(L["arm"].format(i=i), f"expected an Arm, got {describe(arm)}")
                arms = INVALID
    out["arms"] = arms
    names: list[str] = []
    if ok(arms):
        names = [arm.name for arm in arms]
        if not arms and complete:
            probs.add(L["arms"], "a trial needs at least one arm")
        folded = [nm.casefold() for nm in names]
        dup = sorted({nm for nm, f in zip(names, folded) if folded.count(f) > 1})
        if dup:
            probs.add(
                L["arms"],
                f"arm names must be unique (ignoring case: each names a folder), repeated: {dup}",
            )
    control = a["control"]
    if control is not None:
        control = string(control, L["control"], probs)
    if ok(control, arms) and (complete or control is None) and names:
        if control is None:
            control = next((arm.name for arm in arms if arm.placebo), names[0])
        elif control not in names:
            probs.add(L["control"], f"control arm {control!r} is not one of the arms {names}")
            control = INVALID
    out["control"] = control
    if ok(arms, n_per_arm, sizes) and sizes and arms:
        smallest = min(arm.n or n_per_arm for arm in arms)
        big = [s for s in sizes if s > smallest]
        if big:
            probs.add(
                L["power_sizes"],
                f"{big} exceed the smallest arm ({smallest} patients); replicate trials "
                "draw patients from the simulated arms",
            )


def _check_parts(
    a: dict, out: dict, probs: Problems, L: Mapping[str, str], Endpoint, Inclusion
) -> None:
    """Endpoints (unique names) and inclusion criteria are the right objects."""
    endpoints = a["endpoints"]
    if isinstance(endpoints, (str, Mapping)) or not isinstance(endpoints, Iterable):
        probs.add(L["endpoints"], f"expected a list of endpoints, got {describe(endpoints)}")
        endpoints = INVALID
    else:
        endpoints = list(endpoints)
        for i, e in enumerate(endpoints):
            if not isinstance(e, Endpoint):
                probs.add(L["endpoint"].format(i=i), f"expected an Endpoint, got {describe(e)}")
                endpoints = INVALID
    out["endpoints"] = endpoints
    inclusion = a["inclusion"]
    if isinstance(inclusion, (str, Mapping)) or not isinstance(inclusion, Iterable):
        probs.add(
            L["inclusion"].replace("[{i}]", ""), f"expected a list, got {describe(inclusion)}"
        )
        inclusion = []
    inclusion = list(inclusion)
    for i, inc in enumerate(inclusion):
        if not isinstance(inc, Inclusion):
            probs.add(L["inclusion"].format(i=i), f"expected an Inclusion, got {describe(inc)}")
            inclusion = INVALID
            break
    out["inclusion"] = inclusion
    if ok(endpoints):
        enames = [e.name for e in endpoints]
        dup = sorted({n for n in enames if enames.count(n) > 1})
        if dup:
            probs.add(L["endpoints"], f"endpoint names must be unique, repeated: {dup}")


def _check_covariates(a: dict, out: dict, probs: Problems, L: Mapping[str, str]) -> None:
    """Subgroups, inclusion criteria and covariate effects name covariates of the population."""
    population, subs = a["population"], out["subgroup_covariates"]
    inclusion, endpoints = out["inclusion"], out["endpoints"]
    if population is not INVALID:
        known = known_covariates(population)
    else:  # a specification whose population failed: its demographics setting
        known = a.get("known_covariates")
    if known is not None:
        if ok(subs):
            bad = [c for c in subs if c not in known]
            if bad:
                probs.add(
                    L["subgroup_covariates"],
                    f"unknown covariate(s) {bad}; {_covariate_text(known)}",
                )
        if ok(inclusion):
            for i, inc in enumerate(inclusion):
                if inc.covariate is not None and inc.covariate not in known:
                    probs.add(
                        f"{L['inclusion'].format(i=i)}.covariate",
                        f"unknown covariate {inc.covariate!r}; {_covariate_text(known)}",
                    )
        for i, c in enumerate(getattr(population, "covariates", ())):
            if c.covariate not in known:
                probs.add(
                    f"{L['covariate_effect'].format(i=i)}.covariate",
                    f"unknown covariate {c.covariate!r} in {c.describe()}; "
                    f"{_covariate_text(known)}",
                )
        if ok(endpoints):
            clash = [e.name for e in endpoints if e.name in known or e.name in RESERVED_COLUMNS]
            if clash:
                probs.add(
                    L["endpoints"],
                    f"endpoint name(s) {clash} are columns of the endpoint table already "
                    f"({list(RESERVED_COLUMNS)} and the covariates); rename them",
                )


def _check_variability(a: dict, out: dict, probs: Problems, L: Mapping[str, str]) -> None:
    """A :class:`~twinjax.trial.Variability` or None; no endpoint named like its columns."""
    from ._variability import Variability

    var = a.get("variability")
    if var is not None and var is not INVALID and not isinstance(var, Variability):
        probs.add(L["variability"], f"expected a Variability or None, got {describe(var)}")
        var = INVALID
    out["variability"] = var
    endpoints = out["endpoints"]
    if ok(var, endpoints) and var is not None and var.dropout is not None:
        clash = [e.name for e in endpoints if e.name in ("dropped", "dropout_time")]
        if clash:
            probs.add(
                L["endpoints"],
                f"endpoint name(s) {clash} are the dropout columns of the endpoint table; "
                "rename them",
            )


def _check_model(a: dict, out: dict, probs: Problems, L: Mapping[str, str]) -> None:
    """Arm parameters and regimens, outputs, endpoint times, beat times, the save grid."""
    model, duration = a["model"], out["duration"]
    arms, inclusion, endpoints = out["arms"], out["inclusion"], out["endpoints"]
    valid = list(model.trial_output_names)
    if ok(arms):
        for i, arm in enumerate(arms):
            w = L["arm"].format(i=i)
            for k, v in (arm.params or {}).items():
                p = param_problem(model, k, v)
                if p is not None:
                    probs.add(f"{w}.params.{k}", p)
            if arm.regimen is not None:
                try:
                    arm.regimen.validate(model)
                except ValueError as err:
                    probs.add(w, f"arm {arm.name!r}: {err}")
    if ok(inclusion):
        for i, inc in enumerate(inclusion):
            if inc.output is not None and inc.output not in model.output_names:
                probs.add(
                    f"{L['inclusion'].format(i=i)}.output",
                    f"inclusion: unknown output {inc.output!r}; outputs are "
                    f"{list(model.output_names)}",
                )
    if ok(endpoints) and ok(duration):
        for i, e in enumerate(endpoints):
            for p in e.problems(valid, duration):
                probs.add(L["endpoint"].format(i=i), p)
    var = out.get("variability")
    var_outs: set[str] = set()
    if ok(var) and var is not None:
        labels = {"error": L["var_error"], "placebo": L["var_placebo"], "outcome": L["var_outcome"]}
        for p in var.output_problems(valid, labels):
            probs.add("", p)
        var_outs = var.outputs & set(valid)
        for i, o in enumerate(var.iov):
            w = L["var_iov"].format(i=i)
            if not model.varies_in_time(o.param):
                probs.add(
                    w,
                    f"inter-occasion variability of {o.param!r}: {type(model).__name__} "
                    "computes its organ's beats in its own loop, where parameters cannot "
                    "change between visits; only its pk.* parameters can have IOV",
                )
            elif o.param not in model.param_names:
                probs.add(
                    f"{w}.param",
                    f"unknown parameter {o.param!r}; parameters are {list(model.param_names)}",
                )
            elif ok(duration) and o.occasions[-1] >= duration:
                probs.add(
                    f"{w}.occasions",
                    f"occasion start {o.occasions[-1]} is not before the end of the trial "
                    f"({duration})",
                )

    beat_outs = set(model.beat_output_names)
    out["beat_times"] = _beat_times(a, out, probs, L, beat_outs)
    _check_grid(out, probs, L, beat_outs)
    default_outs = set(model.default_trial_outputs)  # e.g. a drug concentration, per-beat
    outputs = a["outputs"]
    if outputs:
        outputs = listof(outputs, L["outputs"], probs, string)
        if ok(outputs):
            bad = [o for o in outputs if o not in valid]
            if bad:
                probs.add(L["outputs"], f"unknown output(s) {bad}; valid: {valid}")
            missing = sorted(var_outs - set(outputs))
            if missing:
                probs.add(
                    L["outputs"],
                    f"output(s) {missing} of [variability] must be among the kept outputs",
                )
            outputs = tuple(outputs)
    elif ok(endpoints):
        outputs = tuple(sorted({e.output for e in endpoints if e.output} | default_outs | var_outs))
    else:
        outputs = INVALID
    out["outputs"] = outputs


def _beat_times(a: dict, out: dict, probs: Problems, L: Mapping[str, str], beat_outs):
    """The times per-beat outputs are computed at (given, or those the endpoints read)."""
    endpoints, duration = out["endpoints"], out["duration"]
    beat_times = a["beat_times"]
    if beat_times is not None:
        beat_times = listof(beat_times, L["beat_times"], probs, number)
        if ok(beat_times) and not beat_outs:
            probs.add(
                L["beat_times"],
                "[trial].beat_times is only for models with per-beat outputs (e.g. pk_circulation)",
            )
            beat_times = INVALID
        if ok(beat_times, duration):
            for t in beat_times:
                if not 0.0 <= t <= duration:
                    probs.add(
                        L["beat_times"],
                        f"[trial].beat_times: {t} is outside the trial [0, {duration}]",
                    )
                    beat_times = INVALID
                    break
    elif ok(endpoints, duration):
        bt: set[float] = set()
        for e in endpoints:
            if e.output in beat_outs:
                if e.time is None and e.window is None:
                    probs.add(
                        "",
                        f"endpoint {e.name!r} reads the per-beat output {e.output!r} over "
                        "the whole trial: give [trial].beat_times (the times at which the "
                        "circulation's steady state is computed)",
                    )
                bt |= {t for t in (e.time, e.baseline_time) if t is not None}
                if e.window is not None:
                    bt |= set(e.window)
        beat_times = sorted(bt) if bt else [0.0, duration]
    else:
        beat_times = INVALID
    if ok(beat_times):
        beat_times = tuple(sorted({float(t) for t in beat_times})) if beat_outs else ()
    return beat_times


def _check_grid(out: dict, probs: Problems, L: Mapping[str, str], beat_outs) -> None:
    """Every endpoint finds saved times (or beat times) where it reads."""
    endpoints, duration, save_every = out["endpoints"], out["duration"], out["save_every"]
    beat_times = out["beat_times"]
    if ok(endpoints, duration, save_every, beat_times):
        k = round(duration / save_every)
        grid = np.linspace(0.0, k * save_every, k + 1)
        for i, e in enumerate(endpoints):
            if e.kind == "custom":
                continue
            w = L["endpoint"].format(i=i)
            if e.output in beat_outs:
                if e.window is not None:
                    lo, hi = e.window
                    if not any(lo <= t <= hi for t in beat_times):
                        probs.add(
                            w,
                            f"endpoint {e.name!r}: no beat time in its window {e.window}; "
                            f"beat_times are {list(beat_times)}",
                        )
                for t in _read_times(e):
                    if not any(abs(t - b) <= 1e-9 for b in beat_times):
                        probs.add(
                            w,
                            f"endpoint {e.name!r} reads the per-beat output {e.output!r} at "
                            f"time {t:g}, which is not one of the beat_times {list(beat_times)}",
                        )
            elif e.window is not None:
                lo, hi = e.window
                inside = int(np.sum((grid >= lo - 1e-9) & (grid <= hi + 1e-9)))
                need = 2 if e.kind == "auc" else 1
                if inside < need:
                    probs.add(
                        w,
                        f"endpoint {e.name!r}: its window {list(e.window)} holds {inside} "
                        f"saved time(s) of the grid (save_every = {save_every:g}); need "
                        f"{need}: lower save_every or widen the window",
                    )


def _read_times(e) -> list[float]:
    """The single times an endpoint reads (value/change/responder)."""
    if e.kind == "value":
        return [e.time]
    if e.kind in ("change", "responder"):
        return [e.time, e.baseline_time]
    return []


# ============================================================================ sensitivity
def _power_of_two(n: int) -> bool:
    return n >= 2 and (n & (n - 1)) == 0


def check_sensitivity_fields(f: Mapping, probs: Problems, L: Mapping[str, str]) -> dict:
    """Types and ranges of the fields of a :class:`~twinjax.trial.Sensitivity`
    (``endpoint, arm, local, parameters, patients, sobol, sobol_n, sobol_seed,
    sobol_bootstrap``); names are checked against the trial by :func:`check_trial`.

    Returns the normalised fields (INVALID where a check failed)."""
    out: dict[str, Any] = {}
    out["endpoint"] = string(f["endpoint"], L["sens.endpoint"], probs)
    arm = f["arm"]
    out["arm"] = None if arm is None else string(arm, L["sens.arm"], probs)
    local = boolean(f["local"], L["sens.local"], probs)
    out["local"] = local
    params = f["parameters"]
    if params is not None:
        params = listof(params, L["sens.parameters"], probs, string)
        if ok(params) and not params:
            probs.add(
                L["sens.parameters"], "must name at least one parameter (or be left out: all)"
            )
            params = INVALID
        elif ok(params) and len(set(params)) != len(params):
            probs.add(L["sens.parameters"], f"parameters must be unique, got {params}")
            params = INVALID
        elif ok(params):
            params = tuple(params)
    out["parameters"] = params
    patients = f["patients"]
    if patients is not None:
        patients = integer(patients, L["sens.patients"], probs, lo=1)
    out["patients"] = patients
    if local is False:
        for k in ("parameters", "patients"):
            if f[k] is not None:
                probs.add(L[f"sens.{k}"], "is for the local sensitivities; local is false")
    bounds = f["sobol"]
    w = L["sens.sobol"]
    if bounds is not None and bounds is not INVALID:  # INVALID: reported already
        if table(bounds, w, probs) is INVALID:
            bounds = INVALID
        elif not bounds:
            probs.add(w, "must name at least one parameter: {NAME = [lower, upper], ...}")
            bounds = INVALID
        else:
            b: dict[str, Any] = {}
            for name, v in bounds.items():
                bw = f"{w}.{name}"
                if isinstance(v, (str, bytes, Mapping)) or not isinstance(
                    v, (Sequence, np.ndarray)
                ):
                    probs.add(bw, f"expected [lower, upper], got {describe(v)}")
                    b[name] = INVALID
                    continue
                if len(v) != 2:
                    probs.add(bw, f"expected [lower, upper] (2 numbers), got {len(v)} item(s)")
                    b[name] = INVALID
                    continue
                lo = number(v[0], f"{bw}[0]", probs)
                hi = number(v[1], f"{bw}[1]", probs)
                if ok(lo, hi) and not lo < hi:
                    probs.add(bw, f"lower must be < upper, got [{lo:g}, {hi:g}]")
                    lo = INVALID
                b[name] = (lo, hi) if ok(lo, hi) else INVALID
            bounds = b if ok(*b.values()) else INVALID
    out["sobol"] = bounds
    n = integer(f["sobol_n"], L["sens.sobol_n"], probs, lo=2)
    if ok(n) and not _power_of_two(n):
        up = 1 << (n - 1).bit_length()
        probs.add(
            L["sens.sobol_n"],
            f"base samples must be a power of two >= 2 (the balance properties of Sobol' "
            f"points need it), got {n}; e.g. {up // 2} or {up}",
        )
        n = INVALID
    out["sobol_n"] = n
    seed = f["sobol_seed"]
    out["sobol_seed"] = (
        None if seed is None else integer(seed, L["sens.sobol_seed"], probs, lo=0, hi=MAX_SEED)
    )
    out["sobol_bootstrap"] = integer(f["sobol_bootstrap"], L["sens.sobol_bootstrap"], probs, lo=0)
    if local is False and bounds is None:
        probs.add(
            L["sensitivity"],
            "asks for nothing: set local = true and/or give the Sobol' parameter ranges "
            "(sobol = {parameters = {NAME = [lower, upper], ...}})",
        )
    return out


def _check_sensitivity(
    a: dict, out: dict, probs: Problems, L: Mapping[str, str], complete: bool
) -> None:
    """A :class:`~twinjax.trial.Sensitivity` or None, against the trial: an ODE model,
    a known endpoint (one with a derivative for local sensitivities), a known arm (default:
    the first arm that is not the control), known parameters and admissible ranges."""
    from ..model._model import Model
    from ..sensitivity._quantity import SMOOTH_KINDS, check_bounds
    from ._trial import Sensitivity

    s = a.get("sensitivity")
    out["sensitivity"] = s
    if s is None or s is INVALID:
        return
    W = L["sensitivity"]
    if not isinstance(s, Sensitivity):
        probs.add(W, f"expected a Sensitivity or None, got {describe(s)}")
        out["sensitivity"] = INVALID
        return
    n0 = len(probs)
    model, endpoints, arms = a["model"], out["endpoints"], out["arms"]
    if model is not INVALID and model is not None:
        if not isinstance(model, Model) or model.runs_own_trials:
            probs.add(
                W,
                f"sensitivity analysis needs an ODE model (a twinjax Model); the trial's "
                f"{type(model).__name__} is not one",
            )
            model = INVALID
    if ok(endpoints) and complete:
        names = [e.name for e in endpoints]
        ep = next((e for e in endpoints if e.name == s.endpoint), None)
        if ep is None:
            probs.add(
                L["sens.endpoint"],
                f"unknown endpoint {s.endpoint!r}; the trial's endpoints are {names}",
            )
        elif s.local and ep.kind not in SMOOTH_KINDS:
            probs.add(
                L["sens.endpoint"],
                f"endpoint {s.endpoint!r} of kind {ep.kind!r} is piecewise constant in the "
                "parameters (its derivative is zero almost everywhere); local sensitivities "
                f"need one of the kinds {list(SMOOTH_KINDS)}: choose another endpoint, or "
                "set local = false and keep only the Sobol' analysis",
            )
    arm = s.arm
    the_arm = None
    if ok(arms) and complete and arms:
        names = [x.name for x in arms]
        if arm is None:
            ctl = out.get("control")
            arm = next((x.name for x in arms if x.name != ctl), names[0])
        if arm not in names:
            probs.add(L["sens.arm"], f"unknown arm {arm!r}; the arms are {names}")
        else:
            the_arm = next(x for x in arms if x.name == arm)
    if ok(model) and model is not None:
        pnames = list(model.param_names)
        if s.parameters is not None:
            bad = [k for k in s.parameters if k not in pnames]
            if bad:
                probs.add(
                    L["sens.parameters"], f"unknown parameter(s) {bad}; the model's are {pnames}"
                )
        if s.sobol is not None:
            bad = [k for k in s.sobol if k not in pnames]
            if bad:
                probs.add(L["sens.sobol"], f"unknown parameter(s) {bad}; the model's are {pnames}")
            else:
                try:
                    check_bounds(s.sobol, model, L["sens.sobol"])
                except ValueError as err:
                    probs.add("", str(err))
            if the_arm is not None and the_arm.params:
                fixed = sorted(set(s.sobol) & set(the_arm.params))
                if fixed:
                    probs.add(
                        L["sens.sobol"],
                        f"parameter(s) {fixed} are fixed by arm {arm!r} (its params); they "
                        "cannot also be varied",
                    )
    if len(probs) == n0 and arm != s.arm:
        out["sensitivity"] = dataclasses.replace(s, arm=arm)


# ============================================================================ TOML
TOP_KEYS = {
    "trial",
    "population",
    "arms",
    "endpoints",
    "statistics",
    "variability",
    "sensitivity",
}
TRIAL_KEYS = {
    "name",
    "seed",
    "duration",
    "save_every",
    "solver",
    "rtol",
    "atol",
    "outputs",
    "beat_times",
}
POPULATION_KEYS = {
    "model",
    "n_per_arm",
    "typical",
    "iiv",
    "covariates",
    "inclusion",
    "demographics",
    "correlations",
}
COVARIATE_KEYS = {"type", "param", "covariate", "theta", "ref", "level", "factors"}
ARM_KEYS = {"name", "doses", "n", "placebo", "params"}
DOSE_KEYS = {"amt", "cmt", "time", "rate", "dur", "ii", "addl", "ss"}
ENDPOINT_KEYS = {
    "name",
    "kind",
    "output",
    "time",
    "baseline_time",
    "window",
    "threshold",
    "direction",
    "percent",
    "low",
    "high",
}
STATISTICS_KEYS = {"alpha", "replicates", "power_sizes", "subgroups", "control"}
SENSITIVITY_KEYS = {"endpoint", "arm", "local", "parameters", "patients", "sobol"}
SOBOL_KEYS = {"parameters", "n", "seed", "n_bootstrap"}
SOLVERS = ("ensemble", "diffrax")


def load_toml(path) -> dict:
    """Parse a TOML file; a missing file raises FileNotFoundError, bad TOML a SpecError."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text (UTF-8) file") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder, not a specification file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: not valid TOML: {err}") from None


def _section(spec: Mapping, key: str, probs: Problems) -> Mapping:
    v = spec.get(key, {})
    return v if table(v, f"[{key}]", probs) is not INVALID else {}


def _tables(spec: Mapping, key: str, label: str, probs: Problems) -> list:
    """An array of tables (``[[arms]]``) as a list of (index, table)."""
    v = spec.get(key, [])
    if isinstance(v, (str, Mapping)) or not isinstance(v, Sequence):
        probs.add(label, f"expected an array of tables, got {describe(v)}")
        return []
    out = []
    for i, t in enumerate(v):
        if table(t, f"{label}[{i}]", probs) is not INVALID:
            out.append((i, t))
    return out


def trial_from_dict(cls, spec: Mapping):
    """Build ``cls`` (a :class:`Trial`) from a nested dict with the TOML layout.

    Every value is checked; all problems are raised together as one :class:`SpecError`.
    """
    from ..dosing import Dose, Regimen
    from ..models._registry import get_model
    from ..population import Demographics, Population
    from ..population._population import Categorical, Exponential, Linear, Power
    from ..solve import solvers
    from ._endpoints import Endpoint, check_endpoint_fields
    from ._trial import Arm, Inclusion
    from ._variability import variability_from_toml

    P = Problems()
    if not isinstance(spec, Mapping):
        raise SpecError(f"a trial specification is a table, got {describe(spec)}")
    unknown_keys(spec, "the top level", TOP_KEYS, P)
    tr = _section(spec, "trial", P)
    pop = _section(spec, "population", P)
    st = _section(spec, "statistics", P)
    unknown_keys(tr, "[trial]", TRIAL_KEYS, P)
    unknown_keys(pop, "[population]", POPULATION_KEYS, P)
    unknown_keys(st, "[statistics]", STATISTICS_KEYS, P)
    complete = True

    # ---- the model and the population
    model: Any = INVALID
    if "model" not in pop:
        P.add("[population]", "needs a model name (see `twinjax models`)")
    elif string(pop["model"], "[population].model", P) is not INVALID:
        try:
            model = get_model(pop["model"])
        except ValueError as err:
            P.add("[population].model", str(err))
    n0 = len(P)
    pnames = set(model.param_names) if model is not INVALID else None
    demographics = boolean(pop.get("demographics", True), "[population].demographics", P)
    known = list(known_covariates_for(demographics))
    values: dict[str, dict] = {}
    for sect, lo in (("typical", None), ("iiv", 0.0)):
        d = pop.get(sect, {})
        w = f"[population.{sect}]"
        if table(d, w, P) is INVALID:
            continue
        if pnames is not None:
            unknown_keys(d, w, pnames, P)
        values[sect] = {k: number(v, f"{w}.{k}", P, lo=lo) for k, v in d.items()}
    corr = pop.get("correlations")
    corr_pairs: dict | None = None
    if corr and table(corr, "[population.correlations]", P) is not INVALID:
        corr_pairs = {}
        for k, v in corr.items():
            w = f"[population.correlations].{k!r}"
            pair = tuple(s.strip() for s in str(k).split(","))
            if len(pair) != 2 or not all(pair):
                P.add(w, 'a key names two parameters, as "A,B"')
            elif pnames is not None and not set(pair) <= pnames:
                P.add(w, f"unknown parameter(s) {sorted(set(pair) - pnames)}")
            r = number(v, w, P, lo=-1.0, hi=1.0)
            if r is not INVALID and len(pair) == 2:
                corr_pairs[pair] = r
    kinds: dict[str, Any] = {
        "power": Power,
        "linear": Linear,
        "exponential": Exponential,
        "categorical": Categorical,
    }
    covs = []
    for i, c in _tables(pop, "covariates", "[population.covariates]", P):
        w = f"[population.covariates][{i}]"
        m0 = len(P)
        unknown_keys(c, f"[population.covariates[{i}]]", COVARIATE_KEYS, P)
        kind = string(c.get("type"), f"{w}.type", P, choices=list(kinds))
        param = string(c.get("param"), f"{w}.param", P)
        if param is not INVALID and pnames is not None and param not in pnames:
            P.add(f"{w}.param", f"unknown parameter {param!r}")
        cov = string(c.get("covariate"), f"{w}.covariate", P)
        if ok(cov, demographics) and cov not in known:
            P.add(f"{w}.covariate", f"unknown covariate {cov!r}; {_covariate_text(known)}")
        kw = {k: v for k, v in c.items() if k in COVARIATE_KEYS and k != "type"}
        for k in ("theta", "ref", "level"):
            if k in kw:
                kw[k] = number(kw[k], f"{w}.{k}", P)
        if "factors" in kw:
            f = kw["factors"]
            if table(f, f"{w}.factors", P) is not INVALID:
                fac = {}
                for lv, fv in f.items():
                    try:
                        level = float(lv)
                    except ValueError:
                        P.add(f"{w}.factors", f"level {lv!r} is not a number")
                        continue
                    fac[level] = number(fv, f"{w}.factors.{lv}", P, lo=0, lo_open=True)
                kw["factors"] = fac
        if len(P) == m0:
            try:
                covs.append(kinds[kind](**kw))
            except (TypeError, ValueError) as err:
                P.add(w, str(err))
    population: Any = INVALID
    if len(P) == n0 and model is not INVALID:
        try:
            population = Population.from_cv(
                model,
                dict(values.get("iiv", {})),
                corr=corr_pairs or None,
                typical=dict(values.get("typical", {})),
                covariates=covs,
                demographics=Demographics() if demographics else None,
            )
        except (TypeError, ValueError, KeyError) as err:
            P.add("[population]", str(err).strip("\"'"))

    inclusion = []
    for i, c in _tables(pop, "inclusion", "[population.inclusion]", P):
        w = f"[population.inclusion][{i}]"
        m0 = len(P)
        unknown_keys(c, f"[population.inclusion[{i}]]", {"covariate", "output", "min", "max"}, P)
        lo, hi = c.get("min", -math.inf), c.get("max", math.inf)
        check_inclusion(lo, hi, c.get("covariate"), c.get("output"), w, P)
        if len(P) == m0:
            inclusion.append(Inclusion(lo, hi, c.get("covariate"), c.get("output")))
        else:
            complete = False

    # ---- arms
    arms = []
    for i, a in _tables(spec, "arms", "[[arms]]", P):
        w = f"[arms][{i}]"
        m0 = len(P)
        unknown_keys(a, f"[arms[{i}]]", ARM_KEYS, P)
        if "name" not in a:
            P.add(w, "an arm needs a name")
        doses = []
        for j, d in _tables(a, "doses", f"{w}.doses", P):
            dw = f"{w}.doses[{j}]"
            d0 = len(P)
            unknown_keys(d, f"[arms[{i}].doses[{j}]]", DOSE_KEYS, P)
            if "amt" not in d or "cmt" not in d:
                P.add(dw, "a dose needs amt and cmt")
            for k in ("amt", "time", "rate", "dur", "ii"):
                if k in d:
                    number(d[k], f"{dw}.{k}", P)
            if "cmt" in d:
                string(d["cmt"], f"{dw}.cmt", P)
            if "addl" in d:
                integer(d["addl"], f"{dw}.addl", P, lo=0)
            if "ss" in d:
                integer(d["ss"], f"{dw}.ss", P, lo=0, hi=1)
            if len(P) == d0:
                try:
                    doses.append(Dose(**d))
                except (TypeError, ValueError) as err:
                    P.add(dw, f"arm {a.get('name')!r} dose {j}: {err}")
        aparams = a.get("params")
        if aparams is not None and table(aparams, f"{w}.params", P) is not INVALID:
            if pnames is not None:
                unknown_keys(aparams, f"[arms[{i}].params]", pnames, P)
                aparams = {k: v for k, v in aparams.items() if k in pnames}
        regimen = Regimen(doses) if doses else None
        placebo = a.get("placebo", False)
        if "doses" in a and not doses and len(P) > m0:
            regimen = INVALID  # its doses failed: do not also call it an arm without doses
        if regimen is INVALID:
            boolean(placebo, f"{w}.placebo", P)
        else:
            check_arm(a.get("name", ""), regimen, a.get("n"), placebo, aparams, w, P)
        if len(P) == m0:
            params = {k: float(v) for k, v in aparams.items()} if aparams is not None else None
            arms.append(Arm(a["name"], regimen, a.get("n"), placebo, params))
        else:
            complete = False

    # ---- endpoints
    endpoints = []
    for i, e in _tables(spec, "endpoints", "[[endpoints]]", P):
        w = f"[endpoints][{i}]"
        m0 = len(P)
        unknown_keys(e, f"[endpoints[{i}]]", ENDPOINT_KEYS, P)
        if e.get("kind") == "custom":
            P.add(w, "custom endpoints are defined in Python, not TOML")
        else:
            kw = {k: v for k, v in e.items() if k in ENDPOINT_KEYS}
            if isinstance(kw.get("window"), list):
                kw["window"] = tuple(kw["window"])
            check_endpoint_fields(kw, w, P)
            if len(P) == m0:
                try:
                    endpoints.append(Endpoint(**kw))
                except (TypeError, ValueError) as err:
                    P.absorb(err, w)
        if len(P) > m0:
            complete = False

    # ---- the solver
    solver: Any = INVALID
    name = string(tr.get("solver", "ensemble"), "[trial].solver", P, choices=SOLVERS)
    tol = {}
    for k in ("rtol", "atol"):
        if k in tr:
            tol[k] = number(tr[k], f"[trial].{k}", P, lo=0, lo_open=True)
    if ok(name, *tol.values()):
        try:
            solver = (solvers.Ensemble if name == "ensemble" else solvers.Diffrax)(**tol)
        except (TypeError, ValueError) as err:
            P.add("[trial].solver", str(err))
    if "duration" not in tr:
        P.add("[trial]", "needs a duration (in the model's time unit)")
    variability = variability_from_toml(spec.get("variability"), P)
    sensitivity = sensitivity_from_toml(spec.get("sensitivity"), P)

    kw = dict(
        duration=tr.get("duration", INVALID),
        save_every=tr.get("save_every", 1.0),
        n_per_arm=pop.get("n_per_arm", 100),
        control=st.get("control"),
        replicates=st.get("replicates", 200),
        power_sizes=st.get("power_sizes", ()),
        subgroup_covariates=st.get("subgroups", ()),
        alpha=st.get("alpha", 0.05),
        seed=tr.get("seed", 0),
        name=tr.get("name", "trial"),
        outputs=tr.get("outputs"),
        beat_times=tr.get("beat_times"),
    )
    check_trial(
        dict(
            kw,
            model=model,
            population=population,
            arms=arms,
            endpoints=endpoints,
            inclusion=inclusion,
            variability=variability,
            sensitivity=sensitivity,
            known_covariates=known if ok(demographics) else None,
        ),
        P,
        TOML_LABELS,
        complete=complete,
    )
    P.check()
    return cls(
        model,
        population,
        arms,
        endpoints,
        inclusion=inclusion,
        solver=solver,
        variability=variability,
        sensitivity=sensitivity,
        **kw,
    )


def sensitivity_from_toml(v, probs: Problems):
    """The ``[sensitivity]`` table as a :class:`~twinjax.trial.Sensitivity`, None when
    absent, INVALID after adding its problems (every one, named ``[sensitivity].key``)."""
    from ._trial import Sensitivity

    if v is None:
        return None
    if table(v, "[sensitivity]", probs) is INVALID:
        return INVALID
    unknown_keys(v, "[sensitivity]", SENSITIVITY_KEYS, probs)  # the rest is still checked
    n0 = len(probs)
    if "endpoint" not in v:
        probs.add("[sensitivity]", 'needs endpoint = "NAME" (one of the [[endpoints]])')
    sob = v.get("sobol")
    fields: dict[str, Any] = {
        "endpoint": v.get("endpoint", INVALID),
        "arm": v.get("arm"),
        "local": v.get("local", True),
        "parameters": v.get("parameters"),
        "patients": v.get("patients"),
        "sobol": None,
        "sobol_n": 256,
        "sobol_seed": None,
        "sobol_bootstrap": 1000,
    }
    if sob is not None:
        if table(sob, "[sensitivity.sobol]", probs) is INVALID:
            fields["sobol"] = INVALID
        else:
            q = Problems()
            unknown_keys(sob, "[sensitivity.sobol]", SOBOL_KEYS, q)
            probs.items[n0:n0] = q.items  # reported, without making the table invalid
            n0 += len(q)
            if "parameters" not in sob:
                probs.add(
                    "[sensitivity.sobol]",
                    "needs parameters = {NAME = [lower, upper], ...} (the ranges sampled)",
                )
                fields["sobol"] = INVALID
            else:
                fields["sobol"] = sob["parameters"]
            fields["sobol_n"] = sob.get("n", 256)
            fields["sobol_seed"] = sob.get("seed")
            fields["sobol_bootstrap"] = sob.get("n_bootstrap", 1000)
    if fields["endpoint"] is INVALID:
        fields["endpoint"] = "?"  # reported above; check the other fields
    norm = check_sensitivity_fields(fields, probs, TOML_LABELS)
    if len(probs) > n0:
        return INVALID
    return Sensitivity(**norm)


def known_covariates_for(demographics) -> tuple[str, ...]:
    """The covariates of a TOML population: the demographics columns, or none."""
    from ..population import COLUMNS

    return tuple(COLUMNS) if demographics is True else ()
