"""The parts of a trial a user builds: :class:`Arm`, :class:`Inclusion` and
:class:`Sensitivity`, each checked field by field when made (every problem in one
:class:`~twinjax.trial.SpecError`); the specification builder (``_spec.py``) and the
trial (``_trial.py``) sit above them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..dosing import Regimen
from ._check import (
    INVALID,
    MAX_SEED,
    PY_LABELS,
    Problems,
    arm_name_problem,
    boolean,
    describe,
    integer,
    listof,
    number,
    ok,
    string,
    table,
)

__all__ = ["Arm", "Inclusion", "Sensitivity"]


# ============================================================================ arms, inclusion
def check_arm(name, regimen, n, placebo, params, where: str, probs: Problems) -> None:
    """The fields of an :class:`Arm` (``where``: ``[arms][1]`` or ``Arm('x')``)."""
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


@dataclasses.dataclass(frozen=True)
class Arm:
    """A trial arm: a name, a regimen (None for placebo) and its sample size.

    Arguments:
        name: the arm's name.
        regimen: a :class:`~twinjax.Regimen`; ``None`` only with ``placebo=True``.
        n: patients in this arm (default: the trial's ``n_per_arm``).
        placebo: the arm receives no drug.
        params: fixed parameter values for every patient of this arm, replacing the
            sampled ones (e.g. the Child-Pugh multipliers of a hepatic-impairment arm,
            or the drug-free ``EA_LV`` of a heart-failure arm).
    """

    name: str
    regimen: Regimen | None = None
    n: int | None = None
    placebo: bool = False
    params: Mapping[str, float] | None = None

    def __post_init__(self):
        probs = Problems()
        check_arm(
            self.name, self.regimen, self.n, self.placebo, self.params, f"Arm({self.name!r})", probs
        )
        probs.check()


@dataclasses.dataclass(frozen=True)
class Inclusion:
    """An inclusion criterion on a covariate or on a baseline (time-0) model output."""

    min: float = -np.inf
    max: float = np.inf
    covariate: str | None = None
    output: str | None = None

    def __post_init__(self):
        probs = Problems()
        check_inclusion(self.min, self.max, self.covariate, self.output, "Inclusion", probs)
        probs.check()


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """A sensitivity analysis of one endpoint in one arm, run with the trial.

    Both analyses are of the twin's endpoint under the arm's regimen (as prescribed) on
    the trial's save grid, with the trial's solver; measurement error, placebo response,
    dropout and missed doses are not applied (they are not functions of the parameters).

    Arguments:
        endpoint: the name of one of the trial's endpoints.
        arm: the arm (default: the first arm that is not the control).
        local: normalised local sensitivities ``d log y / d log theta`` per patient of the
            arm's cohort (the trial's own patients, arm parameters applied), by
            forward-mode AD (:func:`twinjax.sensitivity.local`); the report gives their
            median, quartiles and 5-95 % over the patients and a tornado plot. Needs an
            endpoint with a derivative (kinds ``value``, ``change``, ``cmax``, ``auc``,
            ``ctrough``).
        parameters: the parameters of the local analysis (default: every parameter).
        patients: analyse the arm's first ``patients`` patients (default: all of them).
        sobol: ``{name: (lower, upper)}``: first-order and total Sobol' indices of the
            endpoint for the arm's typical patient (the population's typical values and
            the arm's parameters) with these parameters uniform on their ranges
            (:func:`twinjax.sensitivity.sobol`); None: no global analysis.
        sobol_n: Sobol' base samples, a power of two (the model runs ``n (k + 2)`` times).
        sobol_seed: seed of the Sobol' design and bootstrap (default: the trial's seed).
        sobol_bootstrap: bootstrap resamples for the 95 % intervals.

    Raises:
        SpecError: for values of the wrong type or range; names are checked against the
            trial by :class:`Trial` (before any simulation).
    """

    endpoint: str
    arm: str | None = None
    local: bool = True
    parameters: Sequence[str] | None = None
    patients: int | None = None
    sobol: Mapping[str, tuple[float, float]] | None = None
    sobol_n: int = 256
    sobol_seed: int | None = None
    sobol_bootstrap: int = 1000

    def __post_init__(self):
        probs = Problems()
        f = {k.name: getattr(self, k.name) for k in dataclasses.fields(self)}
        v = check_sensitivity_fields(f, probs, PY_LABELS)
        probs.check()
        for k, x in v.items():  # normalised: tuples, floats
            object.__setattr__(self, k, x)
