"""Virtual clinical trials: population, arms, endpoints, statistics and a report."""

from __future__ import annotations

import dataclasses
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
from . import _spec
from ._arms import Arm, Inclusion, Sensitivity
from ._endpoints import Endpoint
from ._spec import SpecError
from ._trial_cohorts import draw_patients
from ._trial_result import TrialResult
from ._trial_sensitivity import run_sensitivity
from ._trial_table import arm_table
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
            tab, bands[arm.name] = arm_table(
                arm.name, n, status, cohort, vals, var, self.seed, i, times, self.endpoints
            )
            tables.append(tab)
        table = pd.concat(tables, ignore_index=True)
        seconds = _time.perf_counter() - t0
        sens = run_sensitivity(self, cohorts) if self.sensitivity is not None else {}
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
        cohort = draw_patients(
            self.population,
            self.model,
            self.inclusion,
            jax.random.fold_in(jax.random.key(self.seed), i),
            n,
        )
        if a.params:
            fixed = {k: np.full(n, float(v)) for k, v in a.params.items()}
            cohort = dataclasses.replace(cohort, params={**cohort.params, **fixed})
        return cohort
