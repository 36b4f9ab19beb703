"""A whole trial checked against its model and population (:func:`check_trial`):
numbers and the save grid, arms, endpoints and inclusion criteria, covariates,
variability, the model's outputs and beat times, the sensitivity settings; every
problem goes to one :class:`~twinjax.trial.SpecError`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ._arms import Arm, Inclusion
from ._check import (
    INVALID,
    MAX_SEED,
    RESERVED_COLUMNS,
    Problems,
    describe,
    integer,
    is_number,
    listof,
    number,
    ok,
    string,
)
from ._spec_sensitivity import check_sensitivity


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


def covariate_text(known) -> str:
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
    from ..ode._model import Model
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
    check_sensitivity(a, out, probs, labels, complete)
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


def _list_of(v, cls, what: str, label: str, item_label: str, probs: Problems) -> Any:
    """``v`` as a list of ``cls`` objects (``Arm``, ``Endpoint``), or INVALID after its
    problems: ``v`` is not a list, or items that are not a ``cls`` (each one named)."""
    if isinstance(v, (str, Mapping)) or not isinstance(v, Iterable):
        probs.add(label, f"expected a list of {what}, got {describe(v)}")
        return INVALID
    items = list(v)
    out: Any = items
    for i, x in enumerate(items):
        if not isinstance(x, cls):
            probs.add(item_label.format(i=i), f"expected an {cls.__name__}, got {describe(x)}")
            out = INVALID
    return out


def _check_arms(a: dict, out: dict, probs: Problems, L: Mapping[str, str], complete, Arm) -> None:
    """The arms (unique names), the control arm, power sizes against the arm sizes."""
    n_per_arm, sizes = out["n_per_arm"], out["power_sizes"]
    arms = _list_of(a["arms"], Arm, "arms", L["arms"], L["arm"], probs)
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
    endpoints = _list_of(
        a["endpoints"], Endpoint, "endpoints", L["endpoints"], L["endpoint"], probs
    )
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
                    f"unknown covariate(s) {bad}; {covariate_text(known)}",
                )
        if ok(inclusion):
            for i, inc in enumerate(inclusion):
                if inc.covariate is not None and inc.covariate not in known:
                    probs.add(
                        f"{L['inclusion'].format(i=i)}.covariate",
                        f"unknown covariate {inc.covariate!r}; {covariate_text(known)}",
                    )
        for i, c in enumerate(getattr(population, "covariates", ())):
            if c.covariate not in known:
                probs.add(
                    f"{L['covariate_effect'].format(i=i)}.covariate",
                    f"unknown covariate {c.covariate!r} in {c.describe()}; {covariate_text(known)}",
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
            if not e.kind.needs_output:  # custom: reads what its fn reads
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
                need = e.kind.min_window_saves
                if inside < need:
                    probs.add(
                        w,
                        f"endpoint {e.name!r}: its window {list(e.window)} holds {inside} "
                        f"saved time(s) of the grid (save_every = {save_every:g}); need "
                        f"{need}: lower save_every or widen the window",
                    )


def _read_times(e) -> list[float]:
    """The single times an endpoint reads (value/change/responder)."""
    return e.kind.read_times(e)
