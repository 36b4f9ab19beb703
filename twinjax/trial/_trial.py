"""Virtual clinical trials: population, arms, endpoints, statistics and a report."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time as _time
import tomllib
from collections.abc import Mapping, Sequence

import jax
import numpy as np
import pandas as pd

from ..dosing import Dose, Regimen
from ..population import Demographics, Population
from ..population._population import Categorical, Exponential, Linear, Power
from ..solve import solvers
from ..solve._cohort import simulate_cohort
from . import _stats
from ._endpoints import Endpoint


class SpecError(ValueError):
    """A malformed trial specification (raised before any simulation)."""


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
        if self.regimen is None and not self.placebo:
            raise SpecError(
                f"arm {self.name!r} has no regimen; give doses or mark it placebo = true"
            )
        if self.n is not None and self.n < 2:
            raise SpecError(f"arm {self.name!r}: n = {self.n}; need at least 2 patients")


@dataclasses.dataclass(frozen=True)
class Inclusion:
    """An inclusion criterion on a covariate or on a baseline (time-0) model output."""

    min: float = -np.inf
    max: float = np.inf
    covariate: str | None = None
    output: str | None = None

    def __post_init__(self):
        if (self.covariate is None) == (self.output is None):
            raise SpecError("an inclusion criterion names exactly one covariate or output")


class Trial:
    """A virtual clinical trial (parallel groups, randomised to arms).

    Arguments:
        model: the :class:`~twinjax.Model`.
        population: the :class:`~twinjax.Population` patients are drawn from.
        arms: the :class:`Arm` list; the comparisons are against ``control``.
        endpoints: the :class:`Endpoint` list.
        duration: simulated time (model time unit) and ``save_every`` its grid step.
        n_per_arm: default patients per arm.
        inclusion: :class:`Inclusion` criteria (patients are drawn until enough pass).
        control: the reference arm (default: the first placebo arm, else the first arm).
        replicates, power_sizes: replicate trials per sample size for the power curve.
        subgroup_covariates: covariates for the subgroup analysis (forest plot).
        alpha: two-sided significance level.
        seed: the random seed (same seed, same trial).
        solver: default ``solvers.Ensemble()``.
        name: a title.
        outputs: outputs to keep (default: those the endpoints read, and the model's).
        beat_times: for models with per-beat outputs (``QuasiStaticTwin``: the
            circulation's steady state at the drug concentration of each time), the
            times at which they are computed (default: the ``time`` and
            ``baseline_time`` of the endpoints that read them); they join the save grid.
    """

    def __init__(
        self,
        model,
        population: Population,
        arms: Sequence[Arm],
        endpoints: Sequence[Endpoint],
        *,
        duration: float,
        save_every: float = 1.0,
        n_per_arm: int = 100,
        inclusion: Sequence[Inclusion] = (),
        control: str | None = None,
        replicates: int = 200,
        power_sizes: Sequence[int] = (),
        subgroup_covariates: Sequence[str] = (),
        alpha: float = 0.05,
        seed: int = 0,
        solver=None,
        name: str = "trial",
        outputs: Sequence[str] | None = None,
        beat_times: Sequence[float] | None = None,
    ):
        self.model = model
        self.population = population
        self.arms = list(arms)
        self.endpoints = list(endpoints)
        self.duration = float(duration)
        self.save_every = float(save_every)
        self.n_per_arm = int(n_per_arm)
        self.inclusion = list(inclusion)
        self.replicates = int(replicates)
        self.power_sizes = [int(n) for n in power_sizes]
        self.subgroup_covariates = list(subgroup_covariates)
        self.alpha = float(alpha)
        self.seed = int(seed)
        self.solver = solver if solver is not None else solvers.Ensemble()
        self.name = name
        self._control_arg = control
        self._outputs_arg = outputs
        self._beat_times_arg = beat_times
        self._validate(control, outputs, beat_times)

    def with_sample_size(self, n_per_arm: int) -> Trial:
        """The same trial with ``n_per_arm`` patients in every arm (per-arm ``n`` dropped)."""
        if int(n_per_arm) < 2:
            raise SpecError(f"n_per_arm = {n_per_arm}; need at least 2 patients per arm")
        arms = [dataclasses.replace(a, n=None) for a in self.arms]
        return Trial(
            self.model,
            self.population,
            arms,
            self.endpoints,
            duration=self.duration,
            save_every=self.save_every,
            n_per_arm=int(n_per_arm),
            inclusion=self.inclusion,
            control=self._control_arg,
            replicates=self.replicates,
            power_sizes=self.power_sizes,
            subgroup_covariates=self.subgroup_covariates,
            alpha=self.alpha,
            seed=self.seed,
            solver=self.solver,
            name=self.name,
            outputs=self._outputs_arg,
            beat_times=self._beat_times_arg,
        )

    @property
    def n_patients(self) -> int:
        return sum(a.n or self.n_per_arm for a in self.arms)

    def _validate(self, control, outputs, beat_times=None):
        if not self.arms:
            raise SpecError("a trial needs at least one arm")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise SpecError(f"arm names must be unique: {names}")
        if control is None:
            control = next((a.name for a in self.arms if a.placebo), names[0])
        if control not in names:
            raise SpecError(f"control arm {control!r} is not one of the arms {names}")
        self.control = control
        if not self.duration > 0 or not self.save_every > 0:
            raise SpecError("duration and save_every must be positive")
        special = getattr(self.model, "trial_output_names", None)
        valid = (
            list(special)
            if special is not None
            else list(self.model.output_names) + list(self.model.state_names)
        )
        pnames = set(self.model.param_names)
        for a in self.arms:
            for k, v in (a.params or {}).items():
                if k not in pnames:
                    raise SpecError(
                        f"arm {a.name!r}: params: unknown parameter {k!r}; the model's "
                        f"parameters are {sorted(pnames)}"
                    )
                try:
                    self.model.check_bounds({k: float(v)})
                except (TypeError, ValueError) as err:
                    raise SpecError(f"arm {a.name!r}: params.{k}: {err}") from None
            if a.regimen is not None:
                try:
                    a.regimen.validate(self.model)
                except ValueError as err:
                    raise SpecError(f"arm {a.name!r}: {err}") from None
        for e in self.endpoints:
            try:
                e.check(valid, self.duration)
            except ValueError as err:
                raise SpecError(str(err)) from None
        beat_outs = set(getattr(self.model, "beat_output_names", ()))
        if beat_times is None:
            bt = set()
            for e in self.endpoints:
                if e.output in beat_outs:
                    if e.time is None and e.window is None:
                        raise SpecError(
                            f"endpoint {e.name!r} reads the per-beat output {e.output!r} over "
                            "the whole trial: give [trial].beat_times (the times at which the "
                            "circulation's steady state is computed)"
                        )
                    bt |= {t for t in (e.time, e.baseline_time) if t is not None}
                    if e.window is not None:
                        bt |= set(e.window)
            beat_times = sorted(bt) if bt else [0.0, self.duration]
        elif not beat_outs:
            raise SpecError(
                "[trial].beat_times is only for models with per-beat outputs (e.g. pk_circulation)"
            )
        beat_times = sorted({float(t) for t in beat_times})
        for t in beat_times:
            if not 0.0 <= t <= self.duration:
                raise SpecError(
                    f"[trial].beat_times: {t} is outside the trial [0, {self.duration}]"
                )
        self.beat_times = tuple(beat_times) if beat_outs else ()
        for e in self.endpoints:
            if e.output in beat_outs and e.window is not None:
                lo, hi = e.window
                if not any(lo <= t <= hi for t in self.beat_times):
                    raise SpecError(
                        f"endpoint {e.name!r}: no beat time in its window {e.window}; "
                        f"beat_times are {list(self.beat_times)}"
                    )
        if len({e.name for e in self.endpoints}) != len(self.endpoints):
            raise SpecError("endpoint names must be unique")
        for inc in self.inclusion:
            if inc.output is not None and inc.output not in self.model.output_names:
                raise SpecError(
                    f"inclusion: unknown output {inc.output!r}; outputs are "
                    f"{list(self.model.output_names)}"
                )
        if special is not None:  # e.g. the drug concentration and the per-beat metrics
            default_outs = {o for o in special if o in beat_outs or o == "pk.C"}
        else:
            default_outs = set(self.model.output_names)
        self.outputs = (
            tuple(outputs)
            if outputs
            else tuple(sorted({e.output for e in self.endpoints if e.output} | default_outs))
        )
        bad = [o for o in self.outputs if o not in valid]
        if bad:
            raise SpecError(f"unknown output(s) {bad}; valid: {valid}")

    # ------------------------------------------------------------------ spec
    @classmethod
    def from_toml(cls, path) -> Trial:
        """Build a trial from a TOML specification file (see ``examples/``)."""
        path = pathlib.Path(path)
        try:
            spec = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise SpecError(f"{path}: not valid TOML: {err}") from None
        return cls.from_dict(spec)

    @classmethod
    def from_dict(cls, spec: Mapping) -> Trial:
        """Build a trial from a nested dict with the TOML layout."""
        from ..models._registry import get_model

        _keys(spec, "", {"trial", "population", "arms", "endpoints", "statistics"})
        tr = dict(spec.get("trial", {}))
        _keys(
            tr,
            "trial",
            {
                "name",
                "seed",
                "duration",
                "save_every",
                "solver",
                "rtol",
                "atol",
                "outputs",
                "beat_times",
            },
        )
        pop = dict(spec.get("population", {}))
        _keys(
            pop,
            "population",
            {
                "model",
                "n_per_arm",
                "typical",
                "iiv",
                "covariates",
                "inclusion",
                "demographics",
                "correlations",
            },
        )
        if "model" not in pop:
            raise SpecError("[population] needs a model name (see `twinjax models`)")
        try:
            model = get_model(pop["model"])
        except ValueError as err:
            raise SpecError(f"[population].model: {err}") from None
        covs = []
        for i, c in enumerate(pop.get("covariates", [])):
            where = f"population.covariates[{i}]"
            _keys(c, where, {"type", "param", "covariate", "theta", "ref", "level", "factors"})
            kind = c.get("type")
            kw = {k: v for k, v in c.items() if k != "type"}
            cls_ = {
                "power": Power,
                "linear": Linear,
                "exponential": Exponential,
                "categorical": Categorical,
            }.get(kind)
            if cls_ is None:
                raise SpecError(
                    f"{where}.type = {kind!r}; allowed: power, linear, exponential, categorical"
                )
            if "factors" in kw:
                kw["factors"] = {float(k): float(v) for k, v in kw["factors"].items()}
            try:
                covs.append(cls_(**kw))
            except (TypeError, ValueError) as err:
                raise SpecError(f"{where}: {err}") from None
        for sect in ("typical", "iiv"):
            if sect in pop:
                _keys(pop[sect], f"population.{sect}", set(model.param_names))
        try:
            population = Population.from_cv(
                model,
                dict(pop.get("iiv", {})),
                corr=_corr(pop.get("correlations")),
                typical=dict(pop.get("typical", {})),
                covariates=covs,
                demographics=Demographics() if pop.get("demographics", True) else None,
            )
        except (TypeError, ValueError, KeyError) as err:
            raise SpecError(f"[population]: {err}") from None
        inclusion = []
        for i, c in enumerate(pop.get("inclusion", [])):
            _keys(c, f"population.inclusion[{i}]", {"covariate", "output", "min", "max"})
            inclusion.append(Inclusion(**c))
        arms = []
        for i, a in enumerate(spec.get("arms", [])):
            where = f"arms[{i}]"
            _keys(a, where, {"name", "doses", "n", "placebo", "params"})
            if "name" not in a:
                raise SpecError(f"{where} needs a name")
            doses = []
            for j, d in enumerate(a.get("doses", [])):
                _keys(
                    d,
                    f"{where}.doses[{j}]",
                    {"amt", "cmt", "time", "rate", "dur", "ii", "addl", "ss"},
                )
                try:
                    doses.append(Dose(**d))
                except (TypeError, ValueError) as err:
                    raise SpecError(f"arm {a['name']!r} dose {j}: {err}") from None
            placebo = bool(a.get("placebo", False))
            aparams = a.get("params")
            if aparams is not None:
                _keys(aparams, f"{where}.params", set(model.param_names))
                aparams = {k: float(v) for k, v in aparams.items()}
            n_arm = a.get("n")
            if n_arm is not None and (not isinstance(n_arm, int) or n_arm < 2):
                raise SpecError(f"{where}.n = {n_arm!r}; need an integer >= 2")
            arms.append(Arm(a["name"], Regimen(doses) if doses else None, n_arm, placebo, aparams))
        endpoints = []
        for i, e in enumerate(spec.get("endpoints", [])):
            where = f"endpoints[{i}]"
            _keys(
                e,
                where,
                {
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
                },
            )
            if e.get("kind") == "custom":
                raise SpecError(f"{where}: custom endpoints are defined in Python, not TOML")
            try:
                e = dict(e)
                if "window" in e:
                    e["window"] = tuple(e["window"])
                endpoints.append(Endpoint(**e))
            except (TypeError, ValueError) as err:
                raise SpecError(f"{where}: {err}") from None
        st = dict(spec.get("statistics", {}))
        _keys(st, "statistics", {"alpha", "replicates", "power_sizes", "subgroups", "control"})
        solver_name = tr.get("solver", "ensemble")
        tol = {k: tr[k] for k in ("rtol", "atol") if k in tr}
        solver: solvers.AbstractSolver
        if solver_name == "ensemble":
            solver = solvers.Ensemble(**tol)
        elif solver_name == "diffrax":
            solver = solvers.Diffrax(**tol)
        else:
            raise SpecError(f"trial.solver = {solver_name!r}; allowed: ensemble, diffrax")
        if "duration" not in tr:
            raise SpecError("[trial] needs a duration (in the model's time unit)")
        return cls(
            model,
            population,
            arms,
            endpoints,
            duration=tr["duration"],
            save_every=tr.get("save_every", 1.0),
            n_per_arm=pop.get("n_per_arm", 100),
            inclusion=inclusion,
            control=st.get("control"),
            replicates=st.get("replicates", 200),
            power_sizes=st.get("power_sizes", ()),
            subgroup_covariates=st.get("subgroups", ()),
            alpha=st.get("alpha", 0.05),
            seed=tr.get("seed", 0),
            solver=solver,
            name=tr.get("name", "trial"),
            outputs=tr.get("outputs"),
            beat_times=tr.get("beat_times"),
        )

    # ------------------------------------------------------------------ running
    @property
    def times(self) -> np.ndarray:
        n = int(round(self.duration / self.save_every))
        grid = np.linspace(0.0, n * self.save_every, n + 1)
        if not self.beat_times:
            return grid
        extra = [t for t in self.beat_times if not np.any(np.isclose(grid, t, atol=1e-9))]
        return np.sort(np.concatenate([grid, np.asarray(extra, float)]))

    def _draw(self, key, n):
        """``n`` patients passing the inclusion criteria (deterministic given the key)."""
        chosen = []
        start = 0
        batch = max(2 * n, 64)
        total = 0
        while total < n:
            c = self.population.sample(key, batch, start=start)
            ok = np.ones(c.n, bool)
            for inc in self.inclusion:
                if inc.covariate is not None:
                    if inc.covariate not in c.covariates:
                        raise SpecError(
                            f"inclusion: unknown covariate {inc.covariate!r}; have "
                            f"{list(c.covariates.columns)}"
                        )
                    v = np.asarray(c.covariates[inc.covariate])
                else:
                    y0 = self.model.init(c.params)
                    v = np.asarray(self.model.observe(0.0, y0, c.params)[inc.output])
                ok &= (v >= inc.min) & (v <= inc.max)
            idx = np.flatnonzero(ok)[: n - total]
            if idx.size:
                chosen.append(c.subset(idx))
                total += idx.size
            start += batch
            if start > 1000 * n:
                raise SpecError("inclusion criteria reject almost every virtual patient")
        out = chosen[0]
        if len(chosen) > 1:
            from ..population._population import Cohort

            out = Cohort(
                params={
                    k: np.concatenate([np.asarray(x.params[k]) for x in chosen]) for k in out.params
                },
                covariates=pd.concat([x.covariates for x in chosen]),
                etas=np.concatenate([np.asarray(x.etas) for x in chosen]),
                iiv=out.iiv,
                typical={
                    k: np.concatenate([np.asarray(x.typical[k]) for x in chosen])
                    for k in out.typical
                },
                index=np.concatenate([np.asarray(x.index) for x in chosen]),
            )
        return out

    def run(self, out=None, progress: bool = True) -> TrialResult:
        """Simulate every arm, compute endpoints and statistics.

        Arguments:
            out: a folder; the results store (Zarr) goes to ``out/results.zarr``.
            progress: show progress bars.
        """
        key = jax.random.key(self.seed)
        times = self.times
        tables, bands = [], {}
        t0 = _time.perf_counter()
        for i, arm in enumerate(self.arms):
            n = arm.n or self.n_per_arm
            cohort = self._draw(jax.random.fold_in(key, i), n)
            if arm.params:
                fixed = {k: np.full(n, float(v)) for k, v in arm.params.items()}
                cohort = dataclasses.replace(cohort, params={**cohort.params, **fixed})
            store = None if out is None else pathlib.Path(out) / "results.zarr" / arm.name
            if hasattr(self.model, "trial_simulate"):
                vals, status = self.model.trial_simulate(
                    cohort.params,
                    arm.regimen,
                    times,
                    beat_times=self.beat_times,
                    solver=self.solver,
                    outputs=self.outputs,
                    progress=progress,
                    store=store,
                )
            else:
                res = simulate_cohort(
                    self.model,
                    cohort,
                    arm.regimen,
                    times,
                    solver=self.solver,
                    store=store,
                    outputs=self.outputs,
                    progress=progress,
                )
                vals = {o: res[o] for o in self.outputs}
                status = res.status
            vals = {o: np.asarray(v) for o, v in vals.items()}
            status = np.asarray(status)
            tab = pd.DataFrame({"arm": arm.name, "patient": np.arange(n), "status": status})
            cov = cohort.covariates.reset_index(drop=True)
            for c in cov.columns:
                tab[c] = np.asarray(cov[c])
            for e in self.endpoints:
                tab[e.name] = e.compute(times, vals)
            tables.append(tab)
            bands[arm.name] = {o: _bands(v[status == 0]) for o, v in vals.items()}
        table = pd.concat(tables, ignore_index=True)
        return TrialResult(self, table, bands, times, _time.perf_counter() - t0)


@dataclasses.dataclass
class TrialResult:
    """Per-patient endpoints, per-arm percentile bands and the statistics of a trial."""

    trial: Trial
    table: pd.DataFrame
    bands: dict
    times: np.ndarray
    seconds: float

    def __post_init__(self):
        tr = self.trial
        ok = self.table[self.table["status"] == 0]
        arms = [a.name for a in tr.arms]
        summ, comp, subs, powers = [], [], [], []
        rng = np.random.default_rng(tr.seed)
        for e in tr.endpoints:
            for a in arms:
                v = ok.loc[ok["arm"] == a, e.name].to_numpy(float)
                summ.append({"endpoint": e.name, "arm": a, **_stats.summarize(v, e.binary)})
            x = ok.loc[ok["arm"] == tr.control, e.name].to_numpy(float)
            for a in arms:
                if a == tr.control:
                    continue
                y = ok.loc[ok["arm"] == a, e.name].to_numpy(float)
                comp.append(
                    {
                        "endpoint": e.name,
                        "arm": a,
                        "control": tr.control,
                        **_stats.compare(x, y, e.binary, tr.alpha),
                    }
                )
                if tr.power_sizes:
                    pc = _stats.power_curve(
                        x, y, tr.power_sizes, tr.replicates, e.binary, tr.alpha, rng
                    )
                    if len(pc):
                        pc.insert(0, "arm", a)
                        pc.insert(0, "endpoint", e.name)
                        powers.append(pc)
            if tr.subgroup_covariates:
                subs.append(
                    _stats.subgroups(
                        ok, e.name, e.binary, tr.control, arms, tr.subgroup_covariates, tr.alpha
                    )
                )
        self.summary = pd.DataFrame(summ)
        self.comparisons = pd.DataFrame(comp)
        self.subgroups = pd.concat(subs, ignore_index=True) if subs else pd.DataFrame()
        self.power = pd.concat(powers, ignore_index=True) if powers else pd.DataFrame()

    def to_json(self) -> dict:
        tr = self.trial
        return {
            "name": tr.name,
            "model": type(tr.model).__name__,
            "seed": tr.seed,
            "n_patients": int(len(self.table)),
            "n_failed": int((self.table["status"] != 0).sum()),
            "arms": [
                {"name": a.name, "n": a.n or tr.n_per_arm, "placebo": a.placebo} for a in tr.arms
            ],
            "control": tr.control,
            "seconds": self.seconds,
            "summary": self.summary.to_dict(orient="records"),
            "comparisons": self.comparisons.to_dict(orient="records"),
            "subgroups": self.subgroups.to_dict(orient="records"),
            "power": self.power.to_dict(orient="records"),
        }

    def write(self, out) -> pathlib.Path:
        """Write ``summary.json``, ``endpoints.csv`` and ``report.html`` to ``out``."""
        from ._report import write_report

        out = pathlib.Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(out / "endpoints.csv", index=False)
        (out / "summary.json").write_text(json.dumps(_clean(self.to_json()), indent=2))
        return write_report(self, out / "report.html")


def _bands(v: np.ndarray) -> np.ndarray:
    """``(5, T)`` percentiles 5, 25, 50, 75, 95 per time; NaN where nothing is finite."""
    q = np.full((5, v.shape[1]), np.nan)
    has = np.isfinite(v).any(axis=0) if v.shape[0] else np.zeros(v.shape[1], bool)
    if has.any():
        q[:, has] = np.nanpercentile(v[:, has], [5, 25, 50, 75, 95], axis=0)
    return q


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _keys(d, where, allowed):
    if not isinstance(d, Mapping):
        raise SpecError(f"[{where}] must be a table, got {type(d).__name__}")
    unknown = [k for k in d if k not in allowed]
    if unknown:
        w = f"[{where}]" if where else "the top level"
        raise SpecError(f"unknown key {unknown[0]!r} in {w}; allowed keys: {sorted(allowed)}")


def _corr(c):
    if not c:
        return None
    return {tuple(k.split(",")): float(v) for k, v in c.items()}
