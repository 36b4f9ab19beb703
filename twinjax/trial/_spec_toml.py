"""A trial from its TOML specification: the tables and keys allowed, the file read
(:func:`load_toml`), and :func:`trial_from_dict`, which checks every value, builds the
model, population, arms, endpoints and solver, and hands the whole to
:func:`~._spec_trial.check_trial`."""

from __future__ import annotations

import math
import pathlib
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from ._arms import Arm, Inclusion, check_arm, check_inclusion
from ._check import (
    INVALID,
    TOML_LABELS,
    Problems,
    SpecError,
    boolean,
    describe,
    integer,
    number,
    ok,
    string,
    table,
    unknown_keys,
)
from ._spec_sensitivity import sensitivity_from_toml
from ._spec_trial import check_trial, covariate_text

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
            P.add(f"{w}.covariate", f"unknown covariate {cov!r}; {covariate_text(known)}")
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


def known_covariates_for(demographics) -> tuple[str, ...]:
    """The covariates of a TOML population: the demographics columns, or none."""
    from ..population import COLUMNS

    return tuple(COLUMNS) if demographics is True else ()
