"""The sensitivity analyses of a trial (:class:`~twinjax.trial.Sensitivity`: local
and/or Sobol' indices of one endpoint), run after the arms and shown in the report."""

from __future__ import annotations

import time as _time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ._trial import Trial


def run_sensitivity(trial: Trial, cohorts) -> dict:
    """Run the :class:`Sensitivity` analyses (see ``docs/trials.md``).

    Returns ``{"local": LocalResult | None, "local_summary": DataFrame | None,
    "sobol": SobolResult | None, "typical": {name: value}, "notes": [str],
    "seconds": float}``."""
    from .. import sensitivity as sa

    s = trial.sensitivity
    assert s is not None and s.arm is not None
    arm = next(a for a in trial.arms if a.name == s.arm)
    ep = next(e for e in trial.endpoints if e.name == s.endpoint)
    out: dict = {"local": None, "local_summary": None, "sobol": None, "notes": []}
    t0 = _time.perf_counter()
    if s.local:
        cohort = cohorts[arm.name]
        m = min(s.patients or cohort.n, cohort.n)
        params = {k: np.asarray(v)[:m] for k, v in cohort.params.items()}
        res = sa.local(
            trial.model,
            params,
            arm.regimen,
            trial.times,
            endpoint=ep,
            parameters=s.parameters,
            solver=trial.solver,
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
        typical = dict(trial.population.typical)
        typical.update(arm.params or {})
        fixed = {k: float(v) for k, v in typical.items() if k not in s.sobol}
        out["typical"] = fixed
        try:
            out["sobol"] = sa.sobol(
                trial.model,
                dict(s.sobol),
                params=fixed,
                regimen=arm.regimen,
                times=trial.times,
                endpoint=ep,
                n=s.sobol_n,
                seed=trial.seed if s.sobol_seed is None else s.sobol_seed,
                n_bootstrap=s.sobol_bootstrap,
                solver=trial.solver,
            )
        except (ValueError, RuntimeError) as err:  # a constant endpoint, or all failed
            out["notes"].append(f"Sobol' indices of {ep.name} not estimated: {err}")
    out["seconds"] = _time.perf_counter() - t0
    return out
