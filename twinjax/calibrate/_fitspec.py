"""Fit specifications (TOML) for ``twinjax fit SPEC.toml DATA.csv --out DIR``.

A specification names a library model, the parameters (initial values, bounds, IIV,
fixed or estimated), covariate effects, the residual error model of every fitted
output, the method (FOCE-I population fit or MAP individual fits) and the handling of
censored records. Every problem is collected and raised as one ``SpecError`` naming its
key before any data are read or anything is compiled; the data are then checked
(:func:`load_data`), with problems naming their line and column.

```toml
[fit]
name = "Theophylline, FOCE-I"
model = "pk1_oral"            # a registered model (`twinjax models`)
method = "foce-i"             # or "saem" ([saem] n_burn, n_em, n_chains, seed, n_is),
                              # or "map" (individual fits, the parameters are the prior);
                              # foce-i with censored records uses the exact Laplace
                              # curvature (NONMEM's LAPLACIAN), named in the report
data = "theophylline"         # optional: a shipped dataset when no DATA.csv is given

[parameters.KA]
value = 1.0                   # initial (foce-i) or typical (map) value
iiv = 0.3                     # variance of eta (omit: no IIV)
# iov = 0.05                  # variance of kappa between occasions (all methods; the
                              # data's occasion column: [fit] occasion, default "OCC")
lower = 0.05                  # optional bounds: foce-i (NONMEM's transform) and saem
upper = 20.0                  # (the M-step) hold the estimate inside; map checks them

[error]
kind = "additive"             # additive | proportional | combined | log
add = 1.0

[[covariates]]
parameter = "CL"
covariate = "WT"
model = "power"               # power | linear | exponential | categorical
theta = 0.75                  # the coefficient (the start when estimated)
reference = 70.0
estimate = false              # true: estimated by foce-i / saem (label "CL~WT" or name)
# bounds = [0.0, 2.0]         # of an estimated coefficient
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib
from collections.abc import Mapping
from typing import Any

from ..trial._spec import (
    INVALID,
    Problems,
    SpecError,
    boolean,
    describe,
    integer,
    load_toml,
    number,
    ok,
    string,
    table,
    unknown_keys,
)
from ._fitspec_tables import covariate_table, error_model_table

__all__ = ["FitSpec", "load_data", "load_fit_spec"]

METHODS = ("foce-i", "saem", "map")
OMEGA_KINDS = ("diagonal", "full")
CENSORING = ("m3", "m4", "drop")

_TOP = ("fit", "parameters", "error", "covariates", "censoring", "diagnostics", "saem")
_FIT = ("name", "model", "method", "omega", "data", "output", "compartments", "occasion")
_PARAM = ("value", "iiv", "iov", "lower", "upper", "fixed")
_CENS = ("method", "lloq")
_DIAG = ("n_sim", "seed", "npde", "vpc_bins", "log_y")
_SAEM = ("n_burn", "n_em", "n_chains", "seed", "n_is")


@dataclasses.dataclass(frozen=True, eq=False)
class FitSpec:
    """A validated fit specification (see the module doc for the TOML form).

    Attributes:
        name: the fit's title; model_name: the registered model; model: the model.
        method: ``"foce-i"``, ``"saem"`` or ``"map"``; omega: ``"diagonal"`` or
            ``"full"``; saem: the ``[saem]`` settings (keyword arguments of
            :func:`~twinjax.calibrate.saem`).
        population: the initial (foce-i) or prior (map) :class:`~twinjax.Population`.
        estimate: the typical values estimated (foce-i); fixed ones stay.
        bounds: ``{name: (lower, upper)}`` from the specification.
        errors: ``{output: ErrorModel}`` initial residual error models.
        dvid: ``{tag: output}`` or None; censoring, lloq: as in ``fit_population``.
        iov: ``{name: variance}`` of the parameters with inter-occasion variability
            (``iov=`` of ``fit_population`` / ``saem`` / ``fit_individual``); occasion:
            the data's occasion column (``[fit] occasion``, default ``"OCC"``).
        data: a shipped dataset name or None; compartments: the CMT names.
        n_sim, seed, npde, vpc_bins, log_y: diagnostics settings.
        raw: the parsed TOML; path: the file; sha256: the file's SHA-256.
    """

    name: str
    model_name: str
    model: Any
    method: str
    omega: str
    population: Any
    estimate: tuple
    bounds: dict
    errors: dict
    dvid: dict | None
    censoring: str | None
    lloq: float | None
    data: str | None
    compartments: Any
    n_sim: int
    seed: int
    npde: bool
    vpc_bins: int
    log_y: bool
    raw: dict
    saem: dict = dataclasses.field(default_factory=dict)
    iov: dict = dataclasses.field(default_factory=dict)
    occasion: str = "OCC"
    path: pathlib.Path | None = None
    sha256: str = ""
    text: str = ""

    @property
    def outputs(self) -> tuple:
        return tuple(self.errors)

    def error_arg(self):
        """The ``error`` argument of the fit functions (one model or a dict)."""
        if len(self.errors) == 1:
            return next(iter(self.errors.values()))
        return dict(self.errors)


def fit_spec_from_dict(spec: Mapping, path=None, sha256: str = "", text: str = "") -> FitSpec:
    """Validate a parsed specification (see :func:`load_fit_spec`)."""
    from ..models._registry import get_model, registered
    from ..population import Population

    probs = Problems()
    if table(spec, "the specification", probs) is INVALID:
        probs.check()
    unknown_keys(spec, "the specification (top level)", _TOP, probs)
    f = spec.get("fit", {})
    if table(f, "[fit]", probs) is INVALID:
        f = {}
    unknown_keys(f, "[fit]", _FIT, probs)
    name = string(f.get("name", "twinjax fit"), "[fit].name", probs)
    model = INVALID
    if "model" not in f:
        probs.add("[fit].model", f"missing: a registered model, one of {sorted(registered())}")
    else:
        mname = string(f["model"], "[fit].model", probs)
        if mname is not INVALID:
            try:
                model = get_model(mname)
            except ValueError as err:
                probs.add("[fit].model", str(err))
    method = f.get("method", "foce-i")
    method = string(
        method.lower() if isinstance(method, str) else method,
        "[fit].method",
        probs,
        choices=METHODS,
    )
    omega_kind = string(f.get("omega", "diagonal"), "[fit].omega", probs, choices=OMEGA_KINDS)
    occasion = string(f.get("occasion", "OCC"), "[fit].occasion", probs)
    data = f.get("data")
    if data is not None:
        from ..data.datasets import NAMES

        data = string(data, "[fit].data", probs, choices=NAMES)
    compartments = f.get("compartments")
    if compartments is not None and not (
        isinstance(compartments, list) and all(isinstance(c, str) for c in compartments)
    ):
        if isinstance(compartments, Mapping):
            try:
                compartments = {int(k): str(v) for k, v in compartments.items()}
            except ValueError:
                probs.add("[fit].compartments", "CMT numbers must be integers")
                compartments = INVALID
        else:
            probs.add(
                "[fit].compartments",
                f"expected a list of compartment names or a table {{CMT = name}}, got "
                f"{describe(compartments)}",
            )
            compartments = INVALID

    # ---- parameters
    params = spec.get("parameters")
    typical, omega, estimate, bounds, iov = {}, {}, [], {}, {}
    if params is None:
        probs.add("[parameters]", "missing: at least one parameter table [parameters.NAME]")
        params = {}
    elif table(params, "[parameters]", probs) is INVALID:
        params = {}
    for pname, p in params.items():
        where = f"[parameters.{pname}]"
        if model is not INVALID and pname not in model.param_names:
            probs.add(
                where,
                f"unknown parameter {pname!r}; the model's parameters are "
                f"{list(model.param_names)}",
            )
            continue
        if table(p, where, probs) is INVALID:
            continue
        unknown_keys(p, where, _PARAM, probs)
        if "value" not in p:
            probs.add(f"{where}.value", "missing: the initial value")
            continue
        v = number(p["value"], f"{where}.value", probs)
        lo = number(p.get("lower", -math.inf), f"{where}.lower", probs, finite=False)
        hi = number(p.get("upper", math.inf), f"{where}.upper", probs, finite=False)
        fixed = boolean(p.get("fixed", False), f"{where}.fixed", probs)
        if "iiv" in p:
            w = number(p["iiv"], f"{where}.iiv", probs, lo=0, lo_open=True)
            if w is not INVALID:
                omega[pname] = w
        if "iov" in p:
            w = number(p["iov"], f"{where}.iov", probs, lo=0, lo_open=True)
            if w is not INVALID:
                iov[pname] = w
        if not ok(v, lo, hi, fixed):
            continue
        if not lo < hi:
            probs.add(where, f"lower {lo:g} must be below upper {hi:g}")
            continue
        if not lo <= v <= hi:
            probs.add(f"{where}.value", f"{v:g} is outside the bounds [{lo:g}, {hi:g}]")
            continue
        if model is not INVALID:
            from ..trial._spec import param_problem

            pr = param_problem(model, pname, v)
            if pr is not None:
                probs.add(f"{where}.value", pr)
                continue
            q = model.param(pname)
            if "lower" not in p:
                lo = q.lower
            if "upper" not in p:
                hi = q.upper
            if lo < q.lower or hi > q.upper:
                probs.add(
                    where,
                    f"bounds [{lo:g}, {hi:g}] reach outside the model's admissible range "
                    f"[{q.lower:g}, {q.upper:g}] {q.unit}",
                )
        # checked with an omitted side already the model's limit (a start at TLAG = 0
        # with only `upper` given is on a bound too)
        bounded = "lower" in p or "upper" in p
        if method in ("foce-i", "saem") and bounded and not fixed and v in (lo, hi):
            probs.add(
                f"{where}.value",
                f"{v:g} is on a bound of [{lo:g}, {hi:g}]: {method.upper()} needs an "
                "estimated typical value to start strictly inside its bounds",
            )
            continue
        typical[pname] = v
        if "lower" in p or "upper" in p:
            bounds[pname] = (lo, hi)
        if not fixed:
            estimate.append(pname)
    if params and not omega and method == "map":
        probs.add("[parameters]", "a map fit needs IIV: give iiv = <variance> for some parameter")

    # ---- error models
    err_t = spec.get("error")
    errors: dict = {}
    dvid: dict = {}
    if err_t is None:
        probs.add("[error]", "missing: the residual error model, e.g. kind = 'additive', add = 1")
    elif table(err_t, "[error]", probs) is not INVALID:
        if all(isinstance(v, Mapping) for v in err_t.values()) and err_t:
            if "output" in f:
                probs.add(
                    "[fit].output",
                    "not used with one [error.OUTPUT] table per output (they name the outputs)",
                )
            for o, e in err_t.items():
                em, tag = error_model_table(e, f"[error.{o}]", probs)
                errors[o] = em
                if tag is not None:
                    dvid[tag] = o
        else:
            em, tag = error_model_table(err_t, "[error]", probs)
            errors[f.get("output") or ""] = em
            if tag is not None:
                dvid[tag] = f.get("output") or ""
    if model is not INVALID:
        fixed_errors = {}
        for o, em in errors.items():
            o = o or (model.output_names[0] if model.output_names else "")
            where = "[fit].output" if len(errors) == 1 and "output" in f else f"[error.{o}]"
            if o not in model.output_names:
                probs.add(
                    where,
                    f"unknown output {o!r}; the model's outputs are {list(model.output_names)}",
                )
            fixed_errors[o] = em
        errors = fixed_errors
        dvid = {t: (o or next(iter(errors))) for t, o in dvid.items()}

    # ---- covariates
    covs = []
    cv = spec.get("covariates", [])
    if not isinstance(cv, list):
        probs.add("[[covariates]]", f"expected an array of tables, got {describe(cv)}")
        cv = []
    for i, c in enumerate(cv):
        if model is INVALID:
            break
        cov = covariate_table(c, f"[[covariates]][{i}]", probs, model)
        if cov is not INVALID:
            covs.append(cov)

    # ---- censoring
    cens = spec.get("censoring", {})
    cmethod, lloq = None, None
    if table(cens, "[censoring]", probs) is not INVALID:
        unknown_keys(cens, "[censoring]", _CENS, probs)
        if "method" in cens:
            cmethod = string(cens["method"], "[censoring].method", probs, choices=CENSORING)
        if "lloq" in cens:
            lloq = number(cens["lloq"], "[censoring].lloq", probs, lo=0, lo_open=True)

    # ---- diagnostics
    d = spec.get("diagnostics", {})
    n_sim, seed, do_npde, bins, log_y = 500, 0, True, 8, False
    if table(d, "[diagnostics]", probs) is not INVALID:
        unknown_keys(d, "[diagnostics]", _DIAG, probs)
        n_sim = integer(d.get("n_sim", 500), "[diagnostics].n_sim", probs, lo=20, hi=100_000)
        seed = integer(d.get("seed", 0), "[diagnostics].seed", probs, lo=0, hi=2**63 - 1)
        do_npde = boolean(d.get("npde", True), "[diagnostics].npde", probs)
        bins = integer(d.get("vpc_bins", 8), "[diagnostics].vpc_bins", probs, lo=2, hi=50)
        log_y = boolean(d.get("log_y", False), "[diagnostics].log_y", probs)

    # ---- SAEM settings
    sa = spec.get("saem", {})
    saem_kw: dict = {}
    if table(sa, "[saem]", probs) is not INVALID:
        unknown_keys(sa, "[saem]", _SAEM, probs)
        if sa and method != "saem":
            probs.add("[saem]", f"only used with method = 'saem', not {method!r}")
        limits = {
            "n_burn": (0, 100_000),
            "n_em": (1, 100_000),
            "n_chains": (1, 100),
            "seed": (0, 2**31 - 1),
            "n_is": (0, 1_000_000),
        }
        for k, (a, b) in limits.items():
            if k in sa:
                v = integer(sa[k], f"[saem].{k}", probs, lo=a, hi=b)
                if v is not INVALID:
                    saem_kw[k] = v

    population = INVALID
    if model is not INVALID and not probs.items:
        try:
            population = Population(model, typical=typical, covariates=covs, omega=omega or None)
        except (ValueError, TypeError) as exc:
            probs.add("[parameters]", str(exc))
        if method != "map" and not estimate:
            probs.add("[parameters]", "every parameter is fixed: nothing to estimate")
        if method != "map" and not omega:
            probs.add(
                "[parameters]",
                f"a {method} fit needs IIV: give iiv = <variance> for some parameter",
            )
        for i, c in enumerate(covs):
            if c.estimate and method == "map":
                probs.add(
                    f"[[covariates]][{i}].estimate",
                    "covariate coefficients are estimated by foce-i and saem, not map "
                    "(map fits use the given value): set estimate = false or method = "
                    "'foce-i'",
                )
        if iov and model is not INVALID:
            from ._iov import check_iov

            try:
                check_iov(model, iov, where="[parameters].iov")
            except (TypeError, ValueError) as exc:
                probs.add("[parameters]", str(exc))
        if method == "saem":
            no_iiv = [k for k in estimate if k not in omega]
            if no_iiv:
                probs.add(
                    "[parameters]",
                    f"saem estimates only typical values with IIV; {no_iiv} have no iiv: "
                    "give them iiv = <variance> or fixed = true",
                )
    probs.check(str(path) if path else "the specification")
    return FitSpec(
        name=name,
        model_name=str(f["model"]),
        model=model,
        method=method,
        omega=omega_kind,
        population=population,
        estimate=tuple(estimate),
        bounds=bounds,
        errors=errors,
        dvid=dvid or None,
        censoring=cmethod,
        lloq=lloq,
        data=data,
        compartments=compartments,
        n_sim=n_sim,
        seed=seed,
        npde=do_npde,
        vpc_bins=bins,
        log_y=log_y,
        raw=dict(spec),
        saem=saem_kw,
        iov=iov,
        occasion=str(occasion) if occasion is not INVALID else "OCC",
        path=pathlib.Path(path) if path else None,
        sha256=sha256,
        text=text,
    )


def load_fit_spec(path) -> FitSpec:
    """Read and validate a fit specification (TOML).

    Raises:
        SpecError: every problem found, each naming its key (nothing is compiled).
        FileNotFoundError: no such file.
    """
    path = pathlib.Path(path)
    raw = load_toml(path)
    data = path.read_bytes()
    return fit_spec_from_dict(
        raw, path, hashlib.sha256(data).hexdigest(), data.decode("utf-8", "replace")
    )


def load_data(spec: FitSpec, data=None):
    """Read the dataset of a fit and check it against the specification.

    Arguments:
        spec: the :class:`FitSpec`.
        data: a NONMEM CSV path, or None for the specification's shipped dataset.

    Returns:
        ``(dataset, sha256 of the data file, source text)``.

    Raises:
        DatasetError: a malformed dataset (every problem with its line and column).
        SpecError: no data given, a covariate effect naming a column the dataset does
            not have, no occasion column for ``iov``, no observations.
        ValueError: records tagged with an output that is not fitted, an occasion that
            is not an integer or decreases along a subject's records (line named).
    """
    from ..data import read_nonmem
    from ..data.datasets import path as shipped_path
    from ._map import prepare_data

    if data is None:
        if spec.data is None:
            raise SpecError(
                "no data: give DATA.csv on the command line or [fit].data = a shipped "
                "dataset (theophylline, phenobarbital, indomethacin)"
            )
        file = shipped_path(spec.data)
        source = f"shipped dataset {spec.data!r} ({file.name})"
    else:
        file = pathlib.Path(data)
        source = str(file)
    comp = spec.compartments if spec.compartments is not None else spec.model
    ds = read_nonmem(file, compartments=comp)
    sha = hashlib.sha256(file.read_bytes()).hexdigest()
    probs = Problems()
    cols = list(ds.covariate_names)
    changing = set(getattr(ds, "time_varying", []) or [])
    for i, c in enumerate(spec.population.covariates):
        if c.covariate not in cols:
            probs.add(
                f"[[covariates]][{i}].covariate",
                f"{c.covariate!r} is not a column of the dataset {source}; its covariate "
                f"columns are {cols}",
            )
        elif c.covariate in changing:
            probs.add(
                f"[[covariates]][{i}].covariate",
                f"{c.covariate!r} changes within subjects in {source} (time-varying); "
                "fits use one value per subject and do not support time-varying "
                "covariates yet",
            )
    probs.check(str(spec.path) if spec.path else "the specification")
    # output tags, censoring flags, empty subjects: checked here, before any compile
    single = len(spec.errors) == 1
    try:
        fd = prepare_data(
            spec.model,
            ds,
            spec.error_arg(),
            output=spec.outputs[0] if single else None,
            lloq=spec.lloq,
            censoring=spec.censoring,
            dvid=spec.dvid,
            occasion_column=spec.occasion if spec.iov else None,
        )
    except ValueError as err:
        if spec.iov and "no occasion column" in str(err):
            cols_all = list(ds.data.columns)
            raise SpecError(
                f"[fit].occasion: the dataset {source} has no occasion column "
                f"{spec.occasion!r} (columns: {cols_all}); iov needs a column numbering "
                'each record\'s occasion: name it with [fit].occasion = "COLUMN"'
            ) from None
        if single and spec.dvid is None and "DVID values" in str(err):
            raise SpecError(
                f"[error]: {err}. In a fit specification: [error].dvid = the tag of the "
                "fitted output's records (records with other tags are then refused by "
                "line), or one [error.OUTPUT] table per output, each with its dvid"
            ) from None
        raise
    if int(fd.mask.sum()) == 0:
        raise SpecError(f"the dataset {source} has no observations to fit")
    return ds, sha, source
