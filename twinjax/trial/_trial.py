"""Virtual clinical trials: population, arms, endpoints, statistics and a report."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time as _time
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import jax
import numpy as np
import pandas as pd

from .._outdir import claim
from ..population import Population
from ..solve import solvers
from ..solve._cohort import simulate_cohort
from . import _spec, _stats
from ._arms import Arm, Inclusion, Sensitivity
from ._endpoints import Endpoint
from ._spec import SpecError
from ._variability import Variability

__all__ = ["Arm", "Inclusion", "Sensitivity", "SpecError", "Trial", "TrialResult"]


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
        variability: a :class:`~twinjax.trial.Variability` (measurement error, placebo
            response, dropout, adherence; see ``docs/trials.md``), or None (none).
        sensitivity: a :class:`Sensitivity`: local and/or Sobol' sensitivity analysis of
            one endpoint, run after the arms and shown in the report; or None.

    Raises:
        SpecError: before anything is simulated, listing every problem of the arguments
            (types, ranges, names; the rules are in ``docs/trials.md``).
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
        variability: Variability | None = None,
        sensitivity: Sensitivity | None = None,
    ):
        probs = _spec.Problems()
        v = _spec.check_trial(
            dict(
                model=model,
                population=population,
                arms=arms,
                endpoints=endpoints,
                duration=duration,
                save_every=save_every,
                n_per_arm=n_per_arm,
                inclusion=inclusion,
                control=control,
                replicates=replicates,
                power_sizes=power_sizes,
                subgroup_covariates=subgroup_covariates,
                alpha=alpha,
                seed=seed,
                name=name,
                outputs=outputs,
                beat_times=beat_times,
                variability=variability,
                sensitivity=sensitivity,
            ),
            probs,
            _spec.PY_LABELS,
        )
        probs.check()
        self.model = model
        self.population = population
        self.arms: list[Arm] = v["arms"]
        self.endpoints: list[Endpoint] = v["endpoints"]
        self.duration: float = v["duration"]
        self.save_every: float = v["save_every"]
        self.n_per_arm: int = v["n_per_arm"]
        self.inclusion: list[Inclusion] = v["inclusion"]
        self.replicates: int = v["replicates"]
        self.power_sizes: list[int] = v["power_sizes"]
        self.subgroup_covariates: list[str] = v["subgroup_covariates"]
        self.alpha: float = v["alpha"]
        self.seed: int = v["seed"]
        self.solver = solver if solver is not None else solvers.Ensemble()
        self.name: str = v["name"]
        self.control: str = v["control"]
        self.beat_times: tuple[float, ...] = v["beat_times"]
        self.outputs: tuple[str, ...] = v["outputs"]
        self.variability: Variability | None = variability
        #: the sensitivity analysis, its arm resolved (None: none)
        self.sensitivity: Sensitivity | None = v["sensitivity"]
        self.dropped_power_sizes: tuple[int, ...] = ()
        self._control_arg = control
        self._outputs_arg = outputs
        self._beat_times_arg = beat_times

    def with_sample_size(self, n_per_arm: int) -> Trial:
        """The same trial with ``n_per_arm`` patients in every arm (per-arm ``n`` dropped).

        Power-curve sizes above ``n_per_arm`` cannot be drawn from the arms: they are
        left out, and listed in the new trial's ``dropped_power_sizes``.
        """
        probs = _spec.Problems()
        n = _spec.integer(n_per_arm, "n_per_arm", probs, lo=2)
        if probs:
            raise SpecError(f"{probs.items[0]} (at least 2 patients per arm)")
        arms = [dataclasses.replace(a, n=None) for a in self.arms]
        keep = [s for s in self.power_sizes if s <= n]
        t = Trial(
            self.model,
            self.population,
            arms,
            self.endpoints,
            duration=self.duration,
            save_every=self.save_every,
            n_per_arm=n,
            inclusion=self.inclusion,
            control=self._control_arg,
            replicates=self.replicates,
            power_sizes=keep,
            subgroup_covariates=self.subgroup_covariates,
            alpha=self.alpha,
            seed=self.seed,
            solver=self.solver,
            name=self.name,
            outputs=self._outputs_arg,
            beat_times=self._beat_times_arg,
            variability=self.variability,
            sensitivity=self.sensitivity,
        )
        t.dropped_power_sizes = tuple(s for s in self.power_sizes if s > n)
        return t

    @property
    def n_patients(self) -> int:
        return sum(a.n or self.n_per_arm for a in self.arms)

    # ------------------------------------------------------------------ spec
    @classmethod
    def from_toml(cls, path) -> Trial:
        """Build a trial from a TOML specification file (see ``examples/``).

        Raises:
            SpecError: listing every problem of the specification (before any simulation).
            FileNotFoundError: no such file.
        """
        return cls.from_dict(_spec.load_toml(path))

    @classmethod
    def from_dict(cls, spec: Mapping) -> Trial:
        """Build a trial from a nested dict with the TOML layout (see :mod:`._spec`)."""
        return _spec.trial_from_dict(cls, spec)

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

    def run(self, out=None, progress: bool = True, verify: bool = False) -> TrialResult:
        """Simulate every arm, compute endpoints and statistics.

        Arguments:
            out: a folder; the results store (Zarr) goes to ``out/results.zarr``. A rerun
                into the same folder reuses the stored chunks of an identical trial.
            progress: show progress bars.
            verify: read every reused chunk back and check its SHA-256 (see
                :func:`~twinjax.simulate_cohort`).
        """
        if out is not None:
            claim(out, "trial")  # before any simulation: never into a folder of user files
        stores = {a.name: None if out is None else _spec.store_path(out, a.name) for a in self.arms}
        times = self.times
        tables, bands = [], {}
        var = self.variability
        t0 = _time.perf_counter()
        cohorts = {}
        for i, arm in enumerate(self.arms):
            n = arm.n or self.n_per_arm
            cohort = self.arm_cohort(arm.name)
            cohorts[arm.name] = cohort
            store = stores[arm.name]
            regimen = arm.regimen
            if var is not None:  # missed doses: one regimen per patient
                regimen = var.regimens(arm.regimen, n, self.seed, i)
            params = cohort.params
            if var is not None and var.iov:  # parameters that change between visits
                params = var.occasion_params(self.model, cohort.params, self.seed, i)
            if self.model.runs_own_trials:  # e.g. organ steady states at beat times
                vals, status = self.model.trial_simulate(
                    params,
                    regimen,
                    times,
                    beat_times=self.beat_times,
                    solver=self.solver,
                    outputs=self.outputs,
                    progress=progress,
                    store=store,
                    verify=verify,
                )
            else:
                sim_cohort: Any = cohort
                if params is not cohort.params:
                    sim_cohort = SimpleNamespace(params=params, covariates=cohort.covariates)
                res = simulate_cohort(
                    self.model,
                    sim_cohort,
                    regimen,
                    times,
                    solver=self.solver,
                    store=store,
                    verify=verify,
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
            measured = vals
            if var is not None:
                vals = var.add_placebo(times, vals, self.seed, i)  # in every arm
                measured = var.measure(vals, self.seed, i)  # residual error per saved time
            for e in self.endpoints:
                tab[e.name] = e.compute(times, measured)
                bcol = _baseline_column(e, self.endpoints)
                if bcol is not None:  # the baseline of a change endpoint, for the ANCOVA
                    base = dataclasses.replace(e, kind="value", time=e.baseline_time)
                    tab[bcol] = base.compute(times, measured)
            if var is not None and var.dropout is not None:
                drop = var.dropout_times(times, vals, n, self.seed, i)
                _apply_dropout(tab, drop, var.dropout.analysis, self.endpoints, times, measured)
            tables.append(tab)
            bands[arm.name] = {o: _bands(v[status == 0]) for o, v in vals.items()}
        table = pd.concat(tables, ignore_index=True)
        seconds = _time.perf_counter() - t0
        sens = self._sensitivity(cohorts) if self.sensitivity is not None else {}
        return TrialResult(self, table, bands, times, seconds, sens)

    def arm_cohort(self, arm: str):
        """The patients of arm ``arm`` as :meth:`run` simulates them: drawn from the
        population (inclusion criteria applied; the same seed gives the same patients)
        with the arm's fixed parameters."""
        i = next((j for j, a in enumerate(self.arms) if a.name == arm), None)
        if i is None:
            raise ValueError(f"unknown arm {arm!r}; the arms are {[a.name for a in self.arms]}")
        a = self.arms[i]
        n = a.n or self.n_per_arm
        cohort = self._draw(jax.random.fold_in(jax.random.key(self.seed), i), n)
        if a.params:
            fixed = {k: np.full(n, float(v)) for k, v in a.params.items()}
            cohort = dataclasses.replace(cohort, params={**cohort.params, **fixed})
        return cohort

    def _sensitivity(self, cohorts) -> dict:
        """Run the :class:`Sensitivity` analyses (see ``docs/trials.md``).

        Returns ``{"local": LocalResult | None, "local_summary": DataFrame | None,
        "sobol": SobolResult | None, "typical": {name: value}, "notes": [str],
        "seconds": float}``."""
        from .. import sensitivity as sa

        s = self.sensitivity
        assert s is not None and s.arm is not None
        arm = next(a for a in self.arms if a.name == s.arm)
        ep = next(e for e in self.endpoints if e.name == s.endpoint)
        out: dict = {"local": None, "local_summary": None, "sobol": None, "notes": []}
        t0 = _time.perf_counter()
        if s.local:
            cohort = cohorts[arm.name]
            m = min(s.patients or cohort.n, cohort.n)
            params = {k: np.asarray(v)[:m] for k, v in cohort.params.items()}
            res = sa.local(
                self.model,
                params,
                arm.regimen,
                self.times,
                endpoint=ep,
                parameters=s.parameters,
                solver=self.solver,
            )
            out["local"] = res
            try:
                out["local_summary"] = res.summary()
            except ValueError:  # every patient failed or has y = 0 (e.g. no drug)
                out["notes"].append(
                    f"Local sensitivities: no patient of {arm.name} has a finite normalised "
                    f"sensitivity of {ep.name} (failed simulations, or {ep.name} = 0)."
                )
        if s.sobol is not None:
            typical = dict(self.population.typical)
            typical.update(arm.params or {})
            fixed = {k: float(v) for k, v in typical.items() if k not in s.sobol}
            out["typical"] = fixed
            try:
                out["sobol"] = sa.sobol(
                    self.model,
                    dict(s.sobol),
                    params=fixed,
                    regimen=arm.regimen,
                    times=self.times,
                    endpoint=ep,
                    n=s.sobol_n,
                    seed=self.seed if s.sobol_seed is None else s.sobol_seed,
                    n_bootstrap=s.sobol_bootstrap,
                    solver=self.solver,
                )
            except (ValueError, RuntimeError) as err:  # a constant endpoint, or all failed
                out["notes"].append(f"Sobol' indices of {ep.name} not estimated: {err}")
        out["seconds"] = _time.perf_counter() - t0
        return out


@dataclasses.dataclass
class TrialResult:
    """Per-patient endpoints, per-arm percentile bands and the statistics of a trial."""

    trial: Trial
    table: pd.DataFrame
    bands: dict
    times: np.ndarray
    seconds: float
    #: the :class:`Sensitivity` analyses (``{}``: none asked for; see ``Trial._sensitivity``)
    sensitivity: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        tr = self.trial
        ok = self.table[self.table["status"] == 0]
        dropout = tr.variability.dropout if tr.variability is not None else None
        if dropout is not None:
            if dropout.analysis == "completers":
                ok = ok[~ok["dropped"].to_numpy(bool)]
            self.dropout = _dropout_table(self.table, [a.name for a in tr.arms], dropout)
        else:
            self.dropout = pd.DataFrame()
        arms = [a.name for a in tr.arms]
        summ, comp, subs, powers = [], [], [], []
        rng = np.random.default_rng(tr.seed)
        all_ok = ok
        skipped = []
        for e in tr.endpoints:
            ok = all_ok
            if dropout is not None:  # LOCF: window endpoints after a dropout are missing
                ok = ok[np.isfinite(ok[e.name].to_numpy(float))]
            for a in arms:
                v = ok.loc[ok["arm"] == a, e.name].to_numpy(float)
                summ.append(
                    {"endpoint": e.name, "arm": a, **_stats.summarize(v, e.binary, tr.alpha)}
                )
            x = ok.loc[ok["arm"] == tr.control, e.name].to_numpy(float)
            bcol = _baseline_column(e, tr.endpoints)
            has_base = bcol is not None and bcol in ok
            bx = ok.loc[ok["arm"] == tr.control, bcol].to_numpy(float) if has_base else None
            for a in arms:
                if a == tr.control:
                    continue
                y = ok.loc[ok["arm"] == a, e.name].to_numpy(float)
                by = ok.loc[ok["arm"] == a, bcol].to_numpy(float) if bx is not None else None
                comp.append(
                    {
                        "endpoint": e.name,
                        "arm": a,
                        "control": tr.control,
                        **_stats.compare(x, y, e.binary, tr.alpha, bx, by),
                    }
                )
                if tr.power_sizes:
                    avail = int(min(np.isfinite(x).sum(), np.isfinite(y).sum()))
                    skipped += [
                        {"endpoint": e.name, "arm": a, "n_per_arm": s, "available": avail}
                        for s in tr.power_sizes
                        if s > avail
                    ]
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
        self.comparisons = _stats.adjust(pd.DataFrame(comp))  # Holm over arms vs control
        self.subgroups = pd.concat(subs, ignore_index=True) if subs else pd.DataFrame()
        self.power = pd.concat(powers, ignore_index=True) if powers else pd.DataFrame()
        #: power-curve sizes left out because an endpoint had fewer analysable patients
        #: in an arm (or the control) than the size (failures, dropout, missing values)
        self.power_skipped = pd.DataFrame(
            skipped, columns=["endpoint", "arm", "n_per_arm", "available"]
        )
        self.patients = _patients_table(self.table, arms, tr.endpoints[0].name, dropout)

    @property
    def warnings(self) -> list[str]:
        """Sample-size problems the report states (rather than dropping sizes silently)."""
        tr = self.trial
        out = []
        if tr.dropped_power_sizes:
            out.append(
                f"Power-curve sizes {list(tr.dropped_power_sizes)} per arm exceed the "
                f"{tr.n_per_arm} patients simulated per arm and were left out"
                + ("; there is no power curve." if not tr.power_sizes else ".")
            )
        for (ep, arm), g in self.power_skipped.groupby(["endpoint", "arm"], sort=False):
            out.append(
                f"{ep}, {arm} vs {tr.control}: power-curve sizes "
                f"{[int(s) for s in g['n_per_arm']]} per arm exceed the "
                f"{int(g['available'].iloc[0])} patients with an analysable value and "
                "were left out."
            )
        return out

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
            "patients": self.patients.to_dict(orient="records"),
            "warnings": self.warnings,
            **({"dropout": self.dropout.to_dict(orient="records")} if len(self.dropout) else {}),
            **({"variability": _variability_json(tr.variability)} if tr.variability else {}),
            **({"sensitivity": self.sensitivity_json()} if self.sensitivity else {}),
        }

    def sensitivity_json(self) -> dict:
        """The sensitivity analyses' settings and numbers (for ``summary.json``)."""
        s, r = self.trial.sensitivity, self.sensitivity
        assert s is not None
        out: dict = {"endpoint": s.endpoint, "arm": s.arm, "notes": list(r["notes"])}
        loc, summ = r.get("local"), r.get("local_summary")
        if loc is not None:
            out["local"] = {
                "patients": loc.n_patients,
                "failed": int((loc.status != 0).sum()),
                "parameters": list(loc.parameters),
                "statistic": "d log endpoint / d log parameter over the patients",
                "summary": []
                if summ is None
                else [{"parameter": k, **row} for k, row in summ.to_dict(orient="index").items()],
            }
        sob = r.get("sobol")
        if sob is not None:
            fr = sob.to_frame()
            out["sobol"] = {
                "n": sob.n,
                "runs": int(sob.samples.shape[0]),
                "seed": sob.seed,
                "n_bootstrap": sob.n_bootstrap,
                "confidence": sob.confidence,
                "n_dropped": sob.n_dropped,
                "bounds": {k: list(v) for k, v in sob.bounds.items()},
                "fixed": r.get("typical", {}),
                "indices": [
                    {"parameter": k, "lower": sob.bounds[k][0], "upper": sob.bounds[k][1], **row}
                    for k, row in fr.to_dict(orient="index").items()
                ],
            }
        return out

    def write(self, out) -> pathlib.Path:
        """Write ``summary.json``, ``endpoints.csv`` and ``report.html`` to ``out``."""
        from ._report import write_report

        out = claim(out, "trial")
        self.table.to_csv(out / "endpoints.csv", index=False)
        (out / "summary.json").write_text(json.dumps(_clean(self.to_json()), indent=2))
        return write_report(self, out / "report.html")


def _baseline_column(e: Endpoint, endpoints) -> str | None:
    """The table column with the baseline of a ``change`` endpoint; None for other kinds
    (or when an endpoint already has that name)."""
    name = f"{e.name}_baseline"
    if e.kind != "change" or any(o.name == name for o in endpoints):
        return None
    return name


def _apply_dropout(tab, drop, analysis, endpoints, times, measured) -> None:
    """Flag dropped patients and blank what was not observed after their dropout.

    ``dropped``/``dropout_time`` columns; an endpoint read after the patient's dropout is
    missing (NaN), except with ``analysis="locf"`` for ``value``/``change``/``responder``
    endpoints, which read at the last visit (an endpoint time of the same output) not
    after the dropout. The patients stay in the table.
    """
    dropped = np.isfinite(drop)
    tab["dropped"] = dropped
    tab["dropout_time"] = np.where(dropped, drop, np.nan)
    t_end = float(times[-1])
    for e in endpoints:
        if e.kind in ("value", "change", "responder"):
            last = max(e.time, e.baseline_time)
        elif e.window is not None:
            last = e.window[1]
        else:
            last = t_end
        lost = drop < last
        if not lost.any():
            continue
        col = tab[e.name].to_numpy(float).copy()
        col[lost] = np.nan
        if analysis == "locf" and e.kind in ("value", "change", "responder"):
            visits = sorted(
                {o.time for o in endpoints if o.output == e.output and o.time is not None}
                | {o.baseline_time for o in endpoints if o.output == e.output}
            )
            lo = e.baseline_time if e.kind != "value" else -np.inf
            for v in visits:
                if not lo <= v < e.time:
                    continue
                nxt = min([w for w in visits if w > v] + [np.inf])
                who = lost & (drop >= v) & (drop < nxt)
                if who.any():
                    at = dataclasses.replace(e, time=v).compute(times, measured)
                    col[who] = np.asarray(at, float)[who]
        tab[e.name] = col
        bcol = _baseline_column(e, endpoints)
        if bcol is not None:
            b = tab[bcol].to_numpy(float).copy()
            b[drop < e.baseline_time] = np.nan
            tab[bcol] = b


def _patients_table(table, arms, primary: str, dropout) -> pd.DataFrame:
    """Per arm: patients simulated, failed simulations, dropouts, and patients analysed
    for the primary endpoint (a finite value in the analysis population)."""
    rows = []
    for a in arms:
        t = table[table["arm"] == a]
        ok = t["status"].to_numpy() == 0
        dropped = t["dropped"].to_numpy(bool) if "dropped" in t else np.zeros(len(t), bool)
        analysed = ok & np.isfinite(t[primary].to_numpy(float))
        if dropout is not None and dropout.analysis == "completers":
            analysed &= ~dropped
        rows.append(
            {
                "arm": a,
                "simulated": len(t),
                "failed": int((~ok).sum()),
                "dropped_out": int((dropped & ok).sum()),
                "analysed_primary": int(analysed.sum()),
            }
        )
    return pd.DataFrame(rows)


def _dropout_table(table, arms, dropout) -> pd.DataFrame:
    """Per arm: patients, dropped, the fraction and the analysis population."""
    rows = []
    for a in arms:
        t = table[table["arm"] == a]
        n, d = len(t), int(t["dropped"].sum())
        rows.append(
            {
                "arm": a,
                "n": n,
                "dropped": d,
                "fraction": d / n if n else np.nan,
                "analysis": dropout.analysis,
                "analysed": n - d if dropout.analysis == "completers" else n,
            }
        )
    return pd.DataFrame(rows)


def _variability_json(v: Variability) -> dict:
    return {
        "errors": [dataclasses.asdict(e) for e in v.errors],
        "placebo": [dataclasses.asdict(p) for p in v.placebo],
        "dropout": None if v.dropout is None else dataclasses.asdict(v.dropout),
        "adherence": v.adherence,
        "iov": [
            {"param": o.param, "sd": o.kappa_sd, "occasions": list(o.occasions)} for o in v.iov
        ],
    }


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
