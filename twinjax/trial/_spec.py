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

Layout: the checks of single values and the :class:`SpecError` are in ``_check.py``,
the arms, inclusion criteria and sensitivity settings with their field checks in
``_arms.py`` (both re-exported here); this module checks a whole trial against its
model and population and builds one from TOML (:func:`trial_from_dict`).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ._arms import Arm as Arm
from ._arms import Inclusion as Inclusion
from ._arms import Sensitivity as Sensitivity
from ._arms import check_arm as check_arm
from ._arms import check_inclusion as check_inclusion
from ._arms import check_sensitivity_fields as check_sensitivity_fields
from ._check import ARM_NAME_CHARS as ARM_NAME_CHARS
from ._check import ARM_NAME_MAX as ARM_NAME_MAX
from ._check import INVALID as INVALID
from ._check import MAX_SEED as MAX_SEED
from ._check import PY_LABELS as PY_LABELS
from ._check import RESERVED_COLUMNS as RESERVED_COLUMNS
from ._check import TOML_LABELS as TOML_LABELS
from ._check import Problems as Problems
from ._check import SpecError as SpecError
from ._check import arm_name_problem as arm_name_problem
from ._check import boolean as boolean
from ._check import describe as describe
from ._check import format_problems as format_problems
from ._check import integer as integer
from ._check import is_bool as is_bool
from ._check import is_int as is_int
from ._check import is_number as is_number
from ._check import listof as listof
from ._check import number as number
from ._check import ok as ok
from ._check import store_path as store_path
from ._check import string as string
from ._check import table as table
from ._check import unknown_keys as unknown_keys

__all__ = ["SpecError", "Problems"]


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


# ============================================================================ the trial
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
def _check_sensitivity(
    a: dict, out: dict, probs: Problems, L: Mapping[str, str], complete: bool
) -> None:
    """A :class:`~twinjax.trial.Sensitivity` or None, against the trial: an ODE model,
    a known endpoint (one with a derivative for local sensitivities), a known arm (default:
    the first arm that is not the control), known parameters and admissible ranges."""
    from ..model._model import Model
    from ..sensitivity._quantity import SMOOTH_KINDS, check_bounds

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
