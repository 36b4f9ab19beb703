"""Phenobarbital in neonates: FOCE-I population fit with weight covariates.

Model (Grasela & Donn 1985; NONMEM's PHENO example without the Apgar effect): one
compartment, IV boluses, ``CL = theta_CL * WT``, ``V = theta_V * WT`` (WT in kg, so the
typical values are per kg), log-normal IIV on CL and V, proportional residual error.

Run: ``python calibration/phenobarbital.py``; writes
``calibration/results/phenobarbital_population.{csv,json}`` and a VPC figure
``calibration/results/phenobarbital_vpc.png``.

Reference values (approximate; for orientation, not a pass/fail check): Grasela TH,
Donn SM, Dev Pharmacol Ther 8:374-383, 1985, and the NONMEM Users Guide Part V PHENO
example report CL about 0.0047 L/h/kg and V about 1 L/kg (0.96-1.0 L/kg). Our model has
no Apgar covariate on V (the PHENO example's third theta): twinjax's covariate effects
have fixed coefficients, so that effect is not estimated here.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import twinjax as tj  # noqa: E402
from twinjax.calibrate import ErrorModel, fit_population  # noqa: E402
from twinjax.models import pk  # noqa: E402
from twinjax.population import Power  # noqa: E402

RESULTS = Path(__file__).parent / "results"
REFERENCE = {"CL_per_kg": 0.0047, "V_per_kg": 1.0}


def run(verbose: bool = False, vpc: bool = True) -> dict:
    """Fit the population; return the estimates, the result and a summary."""
    model = pk.one_compartment()
    data = tj.data.datasets.phenobarbital()
    start = tj.Population(
        model,
        typical={"CL": 0.005, "V": 0.8},
        covariates=[Power("CL", "WT", 1.0, ref=1.0), Power("V", "WT", 1.0, ref=1.0)],
        omega={"CL": 0.1, "V": 0.1},
    )
    res = fit_population(model, data, start, ErrorModel("proportional", prop=0.2), verbose=verbose)
    est = res.estimates.copy()
    est["reference"] = [
        {"CL": REFERENCE["CL_per_kg"], "V": REFERENCE["V_per_kg"]}.get(p, float("nan"))
        for p in est.index
    ]
    est["rel_diff_reference"] = est.estimate / est.reference - 1
    summary = dict(
        method="FOCE-I (Laplace), twinjax",
        model="CL = theta_CL*WT, V = theta_V*WT, log-normal IIV on CL and V, proportional error",
        ofv_nonmem_convention=res.ofv,
        minus2ll_with_constant=res.minus2ll,
        n_subjects=res.n_subjects,
        n_obs=res.n_obs,
        converged=res.converged,
        newton_decrement=res.newton_decrement,
        optimiser=res.message,
        command="python calibration/phenobarbital.py",
        wall_s=res.wall_s,
        estimates=est.reset_index().to_dict(orient="records"),
        shrinkage=res.individual.shrinkage,
        reference_note="approximate published values (Grasela & Donn 1985; NONMEM PHENO)",
    )
    out = dict(estimates=est, summary=summary, result=res)
    if vpc:
        from twinjax.plot import vpc as vpc_plot

        fig, table = vpc_plot(
            res, n_sim=200, key=jax.random.key(1), bins=6, title="Phenobarbital VPC (FOCE-I fit)"
        )
        out["vpc_figure"], out["vpc_table"] = fig, table
    return out


def main():
    out = run()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out["estimates"].to_csv(RESULTS / "phenobarbital_population.csv")
    (RESULTS / "phenobarbital_population.json").write_text(
        json.dumps(out["summary"], indent=2, default=float)
    )
    out["vpc_figure"].savefig(RESULTS / "phenobarbital_vpc.png", dpi=110, bbox_inches="tight")
    out["vpc_table"].to_csv(RESULTS / "phenobarbital_vpc.csv", index=False)
    print(out["result"].summary())


if __name__ == "__main__":
    main()
