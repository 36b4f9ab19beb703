"""Theophylline by SAEM, vs nlmixr2's SAEM, and the importance-sampling objective vs FOCE-I.

Model: as ``calibration/theophylline.py`` (one compartment, first-order absorption,
log-normal IIV on KA, CL and V with a diagonal Omega, additive error), fitted by
:func:`twinjax.calibrate.saem` with nlmixr2's default ``saemControl()`` settings (seed
99, 200 exploratory + 300 smoothing iterations, 3 chains, kernels 2/2/2).

Run: ``python calibration/theophylline_saem.py``; writes
``calibration/results/theophylline_saem.{csv,json}`` (estimates with Louis SEs vs the
references; importance-sampling OFV +- its Monte-Carlo SE at the SAEM estimates and at
the FOCE-I estimates of ``theophylline_population.json``; times).

References:
    - nlmixr2 SAEM on ``theo_sd`` (nlmixr2est reference page of ``addCwres()``, example
      ``one.cmt`` with ``est="saem"``): tka 0.46 (ka 1.58 1/h), tcl 1.01 (CL 2.74 L/h),
      tv 3.45 (V 31.6 L), add.sd 0.695, BSV(CV %) 71.0 / 27.0 / 13.4 (Omega =
      log(1 + CV^2): 0.408 / 0.0704 / 0.0178); its FOCEi objective at these estimates
      116.8908. The nlmixr2 README's SAEM run: 1.58 / 2.75 / 31.6, add.sd 0.694.
    - twinjax FOCE-I (``calibration/theophylline.py``): KA 1.590, CL 2.752, V 31.81,
      OFV 116.803 (nlmixr2 FOCEi 1.59 / 2.75 / 31.8, 116.80).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import twinjax as tj  # noqa: E402
from twinjax.calibrate import ErrorModel, importance_sampling_ofv, saem  # noqa: E402
from twinjax.models import pk  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CV = {"KA": 0.710, "CL": 0.270, "V": 0.134}
REFERENCE = {
    "nlmixr2_saem": {
        "KA": 1.58,
        "CL": 2.74,
        "V": 31.6,
        "SIGMA_add": 0.695,
        **{f"OMEGA({k},{k})": math.log(1 + cv**2) for k, cv in CV.items()},
        "OFV_focei_at_saem_estimates": 116.8908,
    },
    "nlmixr2_saem_readme": {"KA": 1.58, "CL": 2.75, "V": 31.6, "SIGMA_add": 0.694},
}


def run(verbose: bool = True, n_is: int = 5000) -> dict:
    model = pk.one_compartment(absorption="first_order")
    data = tj.data.datasets.theophylline()
    start = tj.Population(
        model, typical={"KA": 1.0, "CL": 3.0, "V": 30.0}, omega={"KA": 0.3, "CL": 0.3, "V": 0.3}
    )
    res = saem(model, data, start, ErrorModel("additive", add=1.0), n_is=n_is, verbose=verbose)
    est = res.estimates.copy()
    for name, ref in REFERENCE.items():
        est[name] = [ref.get(p, float("nan")) for p in est.index]
        est[f"rel_diff_{name}"] = est.estimate / est[name] - 1

    # the importance-sampling objective at the FOCE-I estimates (theophylline.py)
    foce_path = RESULTS / "theophylline_population.json"
    foce = json.loads(foce_path.read_text())
    fe = {r["parameter"]: r["estimate"] for r in foce["estimates"]}
    pop_f = tj.Population(
        model,
        typical={k: fe[k] for k in ("KA", "CL", "V")},
        omega={k: fe[f"OMEGA({k},{k})"] for k in ("KA", "CL", "V")},
    )
    t0 = time.perf_counter()
    is_f = importance_sampling_ofv(
        model, data, pop_f, ErrorModel("additive", add=fe["SIGMA_add"]), n_samples=n_is
    )
    t_is_f = time.perf_counter() - t0
    isr = res.importance
    assert isr is not None
    summary = dict(
        method="SAEM (Kuhn & Lavielle 2005), twinjax; OFV by importance sampling",
        settings=dict(
            n_burn=res.n_burn,
            n_em=res.n_em,
            n_chains=res.n_chains,
            seed=res.seed,
            kernels=[2, 2, 2],
        ),
        ofv_is=res.ofv,
        ofv_is_se=res.ofv_se,
        minus2ll_is=res.minus2ll,
        is_samples_per_subject=isr.n_samples,
        is_proposal=f"multivariate t({isr.df:g}) at the MAP with the Laplace covariance",
        is_min_ess=float(isr.ess.min()),
        ofv_note="OFV excludes n_obs*log(2*pi) (NONMEM / twinjax FOCE-I convention)",
        focei_estimates_ofv_focei=foce["ofv_nonmem_convention"],
        focei_estimates_ofv_is=is_f.ofv,
        focei_estimates_ofv_is_se=is_f.se,
        focei_estimates_ofv_is_minus_focei=is_f.ofv - foce["ofv_nonmem_convention"],
        saem_minus_focei_estimates_ofv_is=res.ofv - is_f.ofv,
        theta=res.theta,
        omega_diag=[float(res.omega[j, j]) for j in range(3)],
        sigma_add=res.errors["C"].add,
        max_abs_rel_diff_fixed_effects_vs_nlmixr2_saem=float(
            est.loc[["KA", "CL", "V"], "rel_diff_nlmixr2_saem"].abs().max()
        ),
        wall_s=res.wall_s,
        wall_s_is_at_focei=t_is_f,
        message=res.message,
        command="python calibration/theophylline_saem.py",
        estimates=est.reset_index().to_dict(orient="records"),
        history_last=res.history.iloc[-1].to_dict(),
        references=REFERENCE,
    )
    return dict(estimates=est, summary=summary, result=res, is_focei=is_f)


def main():
    out = run()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out["estimates"].to_csv(RESULTS / "theophylline_saem.csv")
    (RESULTS / "theophylline_saem.json").write_text(
        json.dumps(out["summary"], indent=2, default=float)
    )
    print(out["result"].summary())
    s = out["summary"]
    print(
        f"IS OFV at the FOCE-I estimates: {s['focei_estimates_ofv_is']:.3f} +- "
        f"{s['focei_estimates_ofv_is_se']:.3f} (FOCE-I OFV {s['focei_estimates_ofv_focei']:.3f})"
    )
    cols = ["estimate", "se", "nlmixr2_saem", "rel_diff_nlmixr2_saem"]
    print(out["estimates"][cols])


if __name__ == "__main__":
    main()
