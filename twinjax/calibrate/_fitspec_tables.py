"""Two tables of a ``twinjax fit`` specification checked and turned into objects: an
``[error]`` table into an :class:`ErrorModel` (:func:`error_model_table`) and a
``[[covariates]]`` entry into a covariate effect (:func:`covariate_table`); problems
are collected in the specification's ``Problems``, never raised one at a time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..trial._spec import (
    INVALID,
    Problems,
    boolean,
    describe,
    is_number,
    number,
    ok,
    string,
    table,
    unknown_keys,
)

ERROR_KINDS = ("additive", "proportional", "combined", "log")
COVARIATE_MODELS = ("power", "linear", "exponential", "categorical")
ERROR_KEYS = ("kind", "add", "prop", "dvid")
COVARIATE_KEYS = (
    "parameter",
    "covariate",
    "model",
    "theta",
    "reference",
    "level",
    "factors",
    "estimate",
    "bounds",
    "name",
)


def error_model_table(e: Mapping, where: str, probs: Problems):
    from ._residual import ErrorModel

    if table(e, where, probs) is INVALID:
        return INVALID, None
    unknown_keys(e, where, ERROR_KEYS, probs)
    kind = string(e.get("kind", "additive"), f"{where}.kind", probs, choices=ERROR_KINDS)
    kw = {}
    need = {
        "additive": ("add",),
        "proportional": ("prop",),
        "combined": ("add", "prop"),
        "log": ("add",),
    }
    if kind is not INVALID:
        for k in ("add", "prop"):
            if k in e:
                if k not in need[kind]:
                    probs.add(f"{where}.{k}", f"not used by a {kind} error model")
                    continue
                v = number(e[k], f"{where}.{k}", probs, lo=0, lo_open=True)
                if v is not INVALID:
                    kw[k] = v
            elif k in need[kind]:
                probs.add(
                    f"{where}.{k}",
                    f"missing: a {kind} error model needs the initial SD(s) {list(need[kind])}",
                )
    dvid = e.get("dvid")
    if dvid is not None and not (is_number(dvid) or isinstance(dvid, str)):
        probs.add(f"{where}.dvid", f"expected a number or a name, got {describe(dvid)}")
        dvid = None
    if kind is INVALID or any(k not in kw for k in need[kind]):
        return INVALID, dvid
    return ErrorModel(kind, **kw), dvid


def covariate_table(c: Mapping, where: str, probs: Problems, model):
    """One ``[[covariates]]`` table -> a Covariate effect (or INVALID)."""
    from ..population import Categorical, Covariate, Exponential, Linear, Power

    if table(c, where, probs) is INVALID:
        return INVALID
    unknown_keys(c, where, COVARIATE_KEYS, probs)
    n0 = len(probs)
    param = string(c.get("parameter"), f"{where}.parameter", probs)
    if param is not INVALID and param not in model.param_names:
        probs.add(
            f"{where}.parameter",
            f"unknown parameter {param!r}; the model's parameters are {list(model.param_names)}",
        )
    cov = string(c.get("covariate"), f"{where}.covariate", probs)
    kind = string(c.get("model", "power"), f"{where}.model", probs, choices=COVARIATE_MODELS)
    opts: dict[str, Any] = {}
    est = boolean(c.get("estimate", False), f"{where}.estimate", probs)
    if est is not INVALID:
        opts["estimate"] = est
    if "bounds" in c:
        b = c["bounds"]
        if (
            isinstance(b, list)
            and len(b) == 2
            and all(is_number(v) for v in b)
            and float(b[0]) < float(b[1])
        ):
            opts["bounds"] = (float(b[0]), float(b[1]))
        else:
            probs.add(
                f"{where}.bounds",
                f"expected [lower, upper] with lower < upper (-inf / inf for none), got "
                f"{describe(b)}",
            )
    if "name" in c:
        nm = string(c["name"], f"{where}.name", probs)
        if nm is not INVALID:
            opts["name"] = nm
    if len(probs) > n0:
        return INVALID
    effect: Covariate
    try:
        if kind == "categorical":
            if ("theta" in c) == ("factors" in c):
                probs.add(where, "a categorical effect needs exactly one of theta or factors")
                return INVALID
            if "reference" in c:
                probs.add(f"{where}.reference", "not used by a categorical effect (use level)")
                return INVALID
            if "factors" in c:
                f = c["factors"]
                if table(f, f"{where}.factors", probs) is INVALID:
                    return INVALID
                facs = {}
                for k, v in f.items():
                    try:
                        level = float(k)
                    except ValueError:
                        probs.add(f"{where}.factors", f"category {k!r} is not a number")
                        continue
                    x = number(v, f"{where}.factors.{k}", probs, lo=0, lo_open=True)
                    if x is not INVALID:
                        facs[level] = x
                if len(probs) > n0:
                    return INVALID
                return Categorical(param, cov, factors=facs, **opts)
            th = number(c["theta"], f"{where}.theta", probs, lo=0, lo_open=True)
            lv = number(c.get("level", 1), f"{where}.level", probs)
            if not ok(th, lv):
                return INVALID
            return Categorical(param, cov, theta=th, level=lv, **opts)
        for k in ("level", "factors"):
            if k in c:
                probs.add(f"{where}.{k}", f"only used by a categorical effect, not {kind}")
        if "theta" not in c:
            probs.add(f"{where}.theta", f"missing: the {kind} effect's coefficient")
            return INVALID
        th = number(c["theta"], f"{where}.theta", probs)
        default_ref = {"power": 70.0, "linear": 40.0, "exponential": 40.0}[kind]
        ref = number(
            c.get("reference", default_ref),
            f"{where}.reference",
            probs,
            lo=0 if kind == "power" else None,
            lo_open=kind == "power",
        )
        if len(probs) > n0:
            return INVALID
        if kind == "power":
            effect = Power(param, cov, theta=th, ref=ref, **opts)
        elif kind == "linear":
            effect = Linear(param, cov, theta=th, ref=ref, **opts)
        else:
            effect = Exponential(param, cov, theta=th, ref=ref, **opts)
        return effect
    except (ValueError, TypeError) as err:  # the effect's own checks (bounds, start)
        probs.add(where, str(err))
        return INVALID
