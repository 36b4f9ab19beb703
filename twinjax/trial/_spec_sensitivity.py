"""The ``[sensitivity]`` part of a trial specification: read from TOML
(:func:`sensitivity_from_toml`) and checked against the trial it belongs to
(:func:`check_sensitivity`: an ODE model, a known endpoint and arm, known parameters,
admissible ranges)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ._arms import Sensitivity, check_sensitivity_fields
from ._check import (
    INVALID,
    TOML_LABELS,
    Problems,
    describe,
    ok,
    table,
    unknown_keys,
)

SENSITIVITY_KEYS = {"endpoint", "arm", "local", "parameters", "patients", "sobol"}
SOBOL_KEYS = {"parameters", "n", "seed", "n_bootstrap"}


def check_sensitivity(
    a: dict, out: dict, probs: Problems, L: Mapping[str, str], complete: bool
) -> None:
    """A :class:`~twinjax.trial.Sensitivity` or None, against the trial: an ODE model,
    a known endpoint (one with a derivative for local sensitivities), a known arm (default:
    the first arm that is not the control), known parameters and admissible ranges."""
    from ..ode._model import Model
    from ..sensitivity._quantity import check_bounds
    from ._endpoint_kinds import SMOOTH_KINDS

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
        elif s.local and not ep.kind.smooth:
            probs.add(
                L["sens.endpoint"],
                f"endpoint {s.endpoint!r} of kind {ep.kind.name!r} is piecewise constant in the "
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
