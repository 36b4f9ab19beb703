"""Coverage study of population fits with censored data (issue #17, "How it will be checked").

Issue #17 asks for a synthetic recovery with 200 subjects, about 20 % of the observations
below the LLOQ, two outputs and one estimated covariate effect: M3 estimates unbiased
(ignoring the BLQ records visibly biased, side by side) and 95 % interval coverage within
90-98 % for every parameter, by FOCE-I and by SAEM. This script runs it.

Design (every replicate has the same design; only the random draws differ):

- **Model**: a one-compartment PK model with first-order absorption coupled to a direct
  Emax PD model (``couple({"pk": pk.one_compartment("first_order"), "pd":
  pd.DirectEmax()}, [Link("pk.C", "pd.C")])``, as ``tests/test_multi_output.py``), a
  single oral dose of 100 mg at t = 0.
- **Population** (truth): KA 1.0 1/h, CL 2.0 L/h at 70 kg with an allometric power of
  weight ``CL_i = CL (WT_i/70)^0.75 exp(eta)`` (Holford 1996, the ``Power`` effect of
  ``docs/calibration.md``; the exponent is estimated), V 20 L, EC50 3 mg/L, E0 10 and
  EMAX 100 (fixed at their true values: SAEM estimates only typical values with IIV,
  docs/calibration.md "Population fits by SAEM"), log-normal IIV with variances
  Omega(KA) 0.09, Omega(CL) 0.09, Omega(V) 0.04, Omega(EC50) 0.09 (diagonal). Weight
  log-normal, median 70 kg, SD of log 0.25, clipped to 40-130 kg.
- **Outputs**: DVID 1 the concentration ``pk.C`` (proportional error, 20 %) at 0.5, 1,
  2, 4, 8, 12, 24 and 36 h; DVID 2 the effect ``pd.E`` (additive error, SD 4) at 1, 4, 12
  and 24 h: 12 observations per subject, 2,400 per replicate.
- **Censoring**: the concentrations below LLOQ = 1.3 mg/L (about 30 % of the
  concentrations, 20 % of all observation records; the effect is never censored) are
  written as nlmixr2/Monolix do (``CENS = 1``, ``DV = LLOQ``).
- **Simulation**: closed forms (Bateman function, Emax), independent of the ODE solver
  used by the fits.
- **Fits** of every replicate: (a) M3 (Beal 2001: ``-2 log Phi((LLOQ - f)/s)`` per
  censored record), (b) the BLQ records dropped (``censoring="drop"``, Beal's M1, the
  biased comparison). FOCE-I: ``fit_population`` (R-matrix covariance step, NONMEM's
  ``MATRIX=R``); SAEM: ``saem`` (Louis SEs; importance-sampling OFV skipped, ``n_is=0``).
  Start (every replicate): KA 1.3, CL 2.6, V 16, EC50 2.2, exponent 0.5, Omega 0.2 each,
  residual SDs 0.3 and 6.
- **Intervals**: 95 % Wald intervals ``estimate +- 1.96 SE`` on the estimation scale,
  as the fit report gives them (``docs/calibration.md`` "twinjax fit"): log scale for
  the typical values, the Omega variances and the residual SDs (``exp(log x +- 1.96
  SE/x)``, SE the delta-method natural-scale SE of the covariance step), natural scale
  for the exponent (no bounds). The natural-scale interval ``x +- 1.96 SE`` is recorded
  too (``*_nat`` columns / ``coverage_natural``).
- **Summary** per parameter: coverage with its binomial SE ``sqrt(p(1-p)/R)`` and the
  Clopper-Pearson 95 % interval, mean relative bias ``mean(est/true - 1)`` with its SE
  (SD / sqrt(R)), convergence counts and time per fit; over converged fits with a
  finite SE (failures are counted, not dropped silently).

Run (FOCE-I, then SAEM)::

    nice -n 19 python calibration/coverage_population.py --method focei --replicates 20
    nice -n 19 python calibration/coverage_population.py --method saem --replicates 10

``--stop-by HH:MM`` (UTC) starts no replicate that the measured time per replicate says
would end after it. Results, rewritten after every replicate (so a stopped run leaves
its numbers and figure): ``calibration/results/coverage_population_<method>.json``
(summary and command), ``..._<method>.csv`` (every replicate's estimates, SEs, CIs) and
``..._<method>.png`` (coverage per parameter with the binomial 95 % band of a true 95 %
coverage at this R; relative bias of M3 vs BLQ dropped). A second stream of replicates
can run beside the first with ``--tag _b --seed 5000`` (other seeds) and be merged into
the main files with ``--merge _b``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import twinjax as tj  # noqa: E402
from twinjax.calibrate import ErrorModel, fit_population, saem  # noqa: E402
from twinjax.models import pd as pdm  # noqa: E402
from twinjax.models import pk  # noqa: E402
from twinjax.ode import Link, couple  # noqa: E402
from twinjax.population import Power  # noqa: E402

RESULTS = Path(__file__).parent / "results"

MODEL = couple(
    {"pk": pk.one_compartment(absorption="first_order"), "pd": pdm.DirectEmax()},
    [Link("pk.C", "pd.C")],
)
COMP = {1: "pk.depot", 2: "pk.central"}
N_SUBJECTS = 200
DOSE = 100.0
T_PK = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0, 36.0])
T_PD = np.array([1.0, 4.0, 12.0, 24.0])
LLOQ = 1.3
TYPICAL = {"pk.KA": 1.0, "pk.CL": 2.0, "pk.V": 20.0, "pd.EC50": 3.0}
FIXED = {"pd.E0": 10.0, "pd.EMAX": 100.0}
EXPONENT = 0.75
OMEGA = {"pk.KA": 0.09, "pk.CL": 0.09, "pk.V": 0.04, "pd.EC50": 0.09}
PROP, ADD = 0.20, 4.0
COV_LABEL = "pk.CL~WT"

TRUTH = {
    **TYPICAL,
    COV_LABEL: EXPONENT,
    **{f"OMEGA({k},{k})": v for k, v in OMEGA.items()},
    "SIGMA_pk.C_prop": PROP,
    "SIGMA_pd.E_add": ADD,
}
# the estimation scale of each parameter for its Wald interval
LOG_SCALE = {k: k != COV_LABEL for k in TRUTH}


def simulate(seed: int) -> tuple[pd.DataFrame, dict]:
    """One replicate: a NONMEM frame (CENS = 1 with DV = LLOQ below the LLOQ)."""
    rng = np.random.default_rng(seed)
    n = N_SUBJECTS
    wt = np.clip(70.0 * np.exp(0.25 * rng.normal(size=n)), 40.0, 130.0)
    eta = rng.normal(size=(n, 4)) * np.sqrt(np.array(list(OMEGA.values())))
    ka = TYPICAL["pk.KA"] * np.exp(eta[:, 0])
    cl = TYPICAL["pk.CL"] * (wt / 70.0) ** EXPONENT * np.exp(eta[:, 1])
    v = TYPICAL["pk.V"] * np.exp(eta[:, 2])
    ec50 = TYPICAL["pd.EC50"] * np.exp(eta[:, 3])
    k = cl / v

    def conc(t):
        t = t[None]
        return (
            DOSE
            * ka[:, None]
            / (v[:, None] * (ka[:, None] - k[:, None]))
            * (np.exp(-k[:, None] * t) - np.exp(-ka[:, None] * t))
        )

    c = conc(T_PK)
    cpd = conc(T_PD)
    e = FIXED["pd.E0"] + FIXED["pd.EMAX"] * cpd / (ec50[:, None] + cpd)
    yc = c * (1.0 + PROP * rng.normal(size=c.shape))
    ye = e + ADD * rng.normal(size=e.shape)
    rows = []
    for i in range(n):
        rows.append(dict(ID=i + 1, TIME=0.0, DV=".", AMT=DOSE, CMT=1, DVID=".", CENS=0, WT=wt[i]))
        obs = [(t, 1, yc[i, j]) for j, t in enumerate(T_PK)]
        obs += [(t, 2, ye[i, j]) for j, t in enumerate(T_PD)]
        for t, tag, y in sorted(obs, key=lambda r: (r[0], r[1])):
            blq = tag == 1 and y < LLOQ
            rows.append(
                dict(
                    ID=i + 1,
                    TIME=t,
                    DV=LLOQ if blq else y,
                    AMT=0.0,
                    CMT=2,
                    DVID=tag,
                    CENS=int(blq),
                    WT=wt[i],
                )
            )
    frame = pd.DataFrame(rows)
    is_obs = frame["AMT"] == 0
    pk_obs = is_obs & (frame["DVID"] == 1)
    info = {
        "blq_fraction_all": float(frame.loc[is_obs, "CENS"].mean()),
        "blq_fraction_pk": float(frame.loc[pk_obs, "CENS"].mean()),
    }
    return frame, info


def start_population() -> tj.Population:
    return tj.Population(
        MODEL,
        typical={"pk.KA": 1.3, "pk.CL": 2.6, "pk.V": 16.0, "pd.EC50": 2.2, **FIXED},
        omega={k: 0.2 for k in OMEGA},
        covariates=[Power("pk.CL", "WT", 0.5, ref=70.0, estimate=True)],
    )


def start_errors() -> dict:
    return {"pk.C": ErrorModel("proportional", prop=0.3), "pd.E": ErrorModel("additive", add=6.0)}


def fit_one(method: str, ds, censoring: str, saem_opts: dict):
    est = tuple(TYPICAL)
    kw = dict(estimate=est, censoring=censoring)
    if method in ("focei", "laplace"):
        kw["laplacian"] = method == "laplace"
        return fit_population(MODEL, ds, start_population(), start_errors(), **kw)
    return saem(MODEL, ds, start_population(), start_errors(), n_is=0, **kw, **saem_opts)


def rows_of(res, rep: int, censoring: str, wall: float) -> list[dict]:
    """One row per parameter: estimate, SE, both Wald intervals, coverage flags."""
    est = res.estimates
    missing = [k for k in TRUTH if k not in est.index]
    if missing:
        raise KeyError(f"estimates lack {missing}; rows are {list(est.index)}")
    out = []
    for k, truth in TRUTH.items():
        x, se = float(est.loc[k, "estimate"]), float(est.loc[k, "se"])
        if LOG_SCALE[k]:
            f = math.exp(1.959964 * se / x) if x > 0 and np.isfinite(se) else float("nan")
            lo, hi = x / f, x * f
        else:
            lo, hi = x - 1.959964 * se, x + 1.959964 * se
        lo_n, hi_n = x - 1.959964 * se, x + 1.959964 * se
        out.append(
            dict(
                replicate=rep,
                censoring=censoring,
                parameter=k,
                truth=truth,
                estimate=x,
                se=se,
                ci_lo=lo,
                ci_hi=hi,
                covered=bool(lo <= truth <= hi) if np.isfinite(se) else None,
                ci_lo_nat=lo_n,
                ci_hi_nat=hi_n,
                covered_nat=bool(lo_n <= truth <= hi_n) if np.isfinite(se) else None,
                rel_error=x / truth - 1.0,
                converged=bool(res.converged),
                finite_se=bool(np.isfinite(se)),
                wall_s=wall,
                n_outer=int(getattr(res, "n_outer", -1)),
                n_censored=int(res.n_censored),
                n_obs=int(res.n_obs),
                message=str(res.message)[:200],
            )
        )
    return out


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def summarise(table: pd.DataFrame) -> dict:
    out: dict = {}
    for cens, g in table.groupby("censoring"):
        per_fit = g.groupby("replicate").agg(
            converged=("converged", "first"), wall_s=("wall_s", "first")
        )
        s: dict = {
            "n_fits": int(len(per_fit)),
            "n_converged": int(per_fit["converged"].sum()),
            "wall_s_per_fit_mean": float(per_fit["wall_s"].mean()),
            "wall_s_per_fit_min": float(per_fit["wall_s"].min()),
            "wall_s_per_fit_max": float(per_fit["wall_s"].max()),
            "parameters": {},
        }
        for p, gp in g.groupby("parameter", sort=False):
            ok = gp[gp["converged"] & gp["finite_se"]]
            n = int(len(ok))
            row: dict = {"truth": float(gp["truth"].iloc[0]), "n": n}
            row["n_not_converged"] = int((~gp["converged"]).sum())
            row["n_nonfinite_se"] = int((gp["converged"] & ~gp["finite_se"]).sum())
            if n:
                for key, col in (("coverage", "covered"), ("coverage_natural", "covered_nat")):
                    k = int(ok[col].astype(bool).sum())
                    p_hat = k / n
                    row[key] = p_hat
                    row[key + "_se"] = math.sqrt(p_hat * (1 - p_hat) / n)
                    row[key + "_cp95"] = clopper_pearson(k, n)
                rel = ok["rel_error"].to_numpy()
                row["mean_rel_bias"] = float(rel.mean())
                row["mean_rel_bias_se"] = float(rel.std(ddof=1) / math.sqrt(n)) if n > 1 else None
                row["mean_estimate"] = float(ok["estimate"].mean())
                row["sd_estimate"] = float(ok["estimate"].std(ddof=1)) if n > 1 else None
                row["mean_se"] = float(ok["se"].mean())
            s["parameters"][p] = row
        out[str(cens)] = s
    return out


def figure(summary: dict, method: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(TRUTH)
    x = np.arange(len(params))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 5.2))
    m3 = summary.get("m3", {}).get("parameters", {})
    dr = summary.get("drop", {}).get("parameters", {})
    n = max([m3[p]["n"] for p in params if p in m3] or [0])
    if n:
        band = 1.959964 * math.sqrt(0.95 * 0.05 / n)
        a1.axhspan(
            0.95 - band, min(1.0, 0.95 + band), color="0.85", label=f"95 % binomial band, R = {n}"
        )
    a1.axhspan(0.90, 0.98, color="tab:green", alpha=0.12, label="issue #17 target 90-98 %")
    a1.axhline(0.95, color="k", lw=0.8)
    for off, d, lab, col in ((-0.15, m3, "M3", "tab:blue"), (0.15, dr, "BLQ dropped", "tab:red")):
        cov = [d.get(p, {}).get("coverage", np.nan) for p in params]
        cp = [d.get(p, {}).get("coverage_cp95", (np.nan, np.nan)) for p in params]
        lo = [c - q[0] for c, q in zip(cov, cp)]
        hi = [q[1] - c for c, q in zip(cov, cp)]
        a1.errorbar(
            x + off,
            cov,
            yerr=[lo, hi],
            fmt="o",
            color=col,
            capsize=3,
            label=f"{lab} (Clopper-Pearson 95 %)",
        )
    a1.set_xticks(x, params, rotation=45, ha="right")
    a1.set_ylim(0.0, 1.02)
    a1.set_ylabel("coverage of the 95 % Wald interval")
    a1.set_title(f"{method}: coverage per parameter")
    a1.legend(fontsize=7, loc="lower left")
    for off, d, lab, col in ((-0.15, m3, "M3", "tab:blue"), (0.15, dr, "BLQ dropped", "tab:red")):
        b = np.array([d.get(p, {}).get("mean_rel_bias", np.nan) for p in params]) * 100
        se = np.array([d.get(p, {}).get("mean_rel_bias_se") or np.nan for p in params]) * 100
        a2.errorbar(
            x + off,
            b,
            yerr=1.959964 * se,
            fmt="s",
            color=col,
            capsize=3,
            label=f"{lab} (± 1.96 SE)",
        )
    a2.axhline(0, color="k", lw=0.8)
    a2.set_xticks(x, params, rotation=45, ha="right")
    a2.set_ylabel("mean relative bias (%)")
    a2.set_title(f"{method}: bias, M3 vs BLQ dropped")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge(method: str, tag: str) -> int:
    """Append the replicates of ``coverage_population_<method><tag>`` to the main run's
    files (``--merge``); their seeds must not overlap the main run's."""
    main_stem = RESULTS / f"coverage_population_{method}"
    other = RESULTS / f"coverage_population_{method}{tag}"
    doc = json.loads(main_stem.with_suffix(".json").read_text())
    doc_b = json.loads(other.with_suffix(".json").read_text())
    seeds = {r["seed"] for r in doc["replicates"]}
    clash = sorted(seeds & {r["seed"] for r in doc_b["replicates"]})
    if clash:
        raise SystemExit(f"--merge {tag}: seeds {clash[:5]} are in both runs")
    table = pd.read_csv(main_stem.with_suffix(".csv"))
    table_b = pd.read_csv(other.with_suffix(".csv"))
    shift = len(doc["replicates"])
    table_b["replicate"] = table_b["replicate"] + shift
    reps_b = [dict(r, replicate=r["replicate"] + shift) for r in doc_b["replicates"]]
    table = pd.concat([table, table_b], ignore_index=True)
    table.to_csv(main_stem.with_suffix(".csv"), index=False)
    summary = summarise(table)
    doc["replicates"] += reps_b
    doc["n_replicates_done"] = len(doc["replicates"])
    doc["commands"] = doc.get("commands", [doc["command"]]) + [
        f"(merged from {other.name}.json) " + c for c in doc_b.get("commands", [doc_b["command"]])
    ]
    doc["merged"] = doc.get("merged", []) + [other.name]
    doc["summary"] = summary
    doc["updated_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    main_stem.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=float))
    figure(summary, method, main_stem.with_suffix(".png"))
    for suffix in (".json", ".csv", ".png"):
        other.with_suffix(suffix).unlink(missing_ok=True)
    print(f"merged {len(reps_b)} replicates of {other.name}: {doc['n_replicates_done']} in all")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--method",
        choices=("focei", "saem", "laplace"),
        default="focei",
        help="laplace: fit_population(laplacian=True), the exact Laplace curvature",
    )
    ap.add_argument("--replicates", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1000, help="replicate r uses seed + r")
    ap.add_argument(
        "--stop-by", default=None, help="UTC HH:MM: start no replicate that would end later"
    )
    ap.add_argument("--no-drop", action="store_true", help="fit M3 only")
    ap.add_argument("--saem-burn", type=int, default=150)
    ap.add_argument("--saem-em", type=int, default=150)
    ap.add_argument("--saem-chains", type=int, default=1)
    ap.add_argument("--tag", default="", help="suffix of the output files")
    ap.add_argument(
        "--append",
        action="store_true",
        help="continue the replicates of an earlier run of the same --method/--tag/--seed",
    )
    ap.add_argument("--cache", default=None, help="JAX persistent compilation cache folder")
    ap.add_argument(
        "--merge",
        default=None,
        metavar="TAG",
        help="append the replicates of the run with --tag TAG (other seeds: independent "
        "replicates) to this --method's main files, renumbered after them, recompute the "
        "summary and figure, and stop (no fitting)",
    )
    a = ap.parse_args(argv)
    if a.merge:
        return merge(a.method, a.merge)
    if a.cache:
        tj.enable_compilation_cache(a.cache)
    saem_opts = dict(n_burn=a.saem_burn, n_em=a.saem_em, n_chains=a.saem_chains)
    stem = RESULTS / f"coverage_population_{a.method}{a.tag}"
    stop = None
    if a.stop_by:
        hh, mm = (int(v) for v in a.stop_by.split(":"))
        now = dt.datetime.now(dt.UTC)
        stop = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    command = "python calibration/coverage_population.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = "unknown"
    rows: list[dict] = []
    reps: list[dict] = []
    commands = [command]
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    first = 0
    if a.append and stem.with_suffix(".json").exists():
        old = json.loads(stem.with_suffix(".json").read_text())
        if old["replicates"] and old["replicates"][0]["seed"] != a.seed:
            raise SystemExit(f"--append: the earlier run used seed {old['replicates'][0]['seed']}")
        rows = pd.read_csv(stem.with_suffix(".csv")).to_dict("records")
        reps = old["replicates"]
        commands = old.get("commands", [old["command"]]) + [command]
        started = old["started_utc"]
        first = len(reps)
    t_start = time.perf_counter()
    n_new = 0
    cens_list = ("m3",) if a.no_drop else ("m3", "drop")
    for r in range(first, first + a.replicates):
        if stop is not None and n_new:
            per = (time.perf_counter() - t_start) / n_new
            if dt.datetime.now(dt.UTC) + dt.timedelta(seconds=per) > stop:
                print(f"stopping before replicate {r}: would end after {a.stop_by} UTC", flush=True)
                break
        frame, info = simulate(a.seed + r)
        ds = tj.data.Dataset(frame, compartments=COMP)
        rep = {"replicate": r, "seed": a.seed + r, **info}
        for cens in cens_list:
            t0 = time.perf_counter()
            res = fit_one(a.method, ds, cens, saem_opts)
            wall = time.perf_counter() - t0
            rows += rows_of(res, r, cens, wall)
            rep[f"{cens}_wall_s"] = wall
            rep[f"{cens}_converged"] = bool(res.converged)
            rep[f"{cens}_n_outer"] = int(getattr(res, "n_outer", -1))
            print(
                f"rep {r} {cens}: {wall:.0f} s converged={res.converged} "
                + " ".join(f"{k}={float(res.estimates.loc[k, 'estimate']):.4g}" for k in TRUTH),
                flush=True,
            )
        reps.append(rep)
        n_new += 1
        table = pd.DataFrame(rows)
        table.to_csv(stem.with_suffix(".csv"), index=False)
        summary = summarise(table)
        doc = {
            "study": "issue #17 coverage: 200 subjects, PK (M3) + PD outputs, estimated CL~WT",
            "method": a.method,
            "command": command,
            "commands": commands,
            "git_head_last_command": head,
            "started_utc": started,
            "updated_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "n_replicates_done": len(reps),
            "n_replicates_requested_last_command": a.replicates,
            "design": {
                "n_subjects": N_SUBJECTS,
                "dose_mg": DOSE,
                "t_pk_h": T_PK.tolist(),
                "t_pd_h": T_PD.tolist(),
                "lloq_mg_per_L": LLOQ,
                "truth": TRUTH,
                "fixed": FIXED,
                "saem": saem_opts if a.method == "saem" else None,
                "wald_scale": {k: ("log" if v else "natural") for k, v in LOG_SCALE.items()},
            },
            "replicates": reps,
            "summary": summary,
            "host": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
            "jax": jax.__version__,
        }
        stem.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=float))
        figure(summary, a.method, stem.with_suffix(".png"))
    print(
        f"done: {n_new} new replicates ({len(reps)} in all), {time.perf_counter() - t_start:.0f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
