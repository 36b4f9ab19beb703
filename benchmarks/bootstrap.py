"""Bootstrap of the theophylline FOCE-I fit: B resamples refitted together vs sequential fits.

Problem: theophylline (12 subjects, 1-cmt oral, log-normal IIV on KA, CL, V, additive
error), FOCE-I. The original fit is ``fit_population`` (timed twice: the first call
compiles, the second is the per-fit time of a sequential bootstrap with the programs
already compiled). ``twinjax.calibrate.bootstrap`` then refits ``B`` resamples (NumPy
seed 0): every objective evaluation of all ``B`` resamples is one compiled call (``vmap``
over the resamples of the inner mode fits and the exact forward-mode gradient), moved by
a vectorised BFGS and checked by a Newton decrement as in ``fit_population``. The first
bootstrap call includes the compilation of the batched programs; it is run twice (the
second timing is the steady state). As a check, ``--check`` resamples are also fitted
one by one by ``fit_population`` on the resampled dataset (subjects duplicated under
new IDs), and the estimates compared.

Also recorded: the covariance step (R-matrix and sandwich SEs) of the original fit.

Run: ``python benchmarks/bootstrap.py [--n 100] [--check 2] [--batch B]``; writes
``benchmarks/results/bootstrap.json``. float64. Run by hand, not by the tests.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

jax.config.update("jax_enable_x64", True)

import twinjax as tj  # noqa: E402
from twinjax.calibrate import (  # noqa: E402
    ErrorModel,
    bootstrap,
    covariance_step,
    fit_population,
    resample_counts,
)
from twinjax.data import datasets as D  # noqa: E402
from twinjax.data import read_nonmem  # noqa: E402
from twinjax.models import pk  # noqa: E402

ORAL = pk.one_compartment(absorption="first_order")
START = dict(typical={"KA": 1.0, "CL": 3.0, "V": 30.0}, omega={"KA": 0.3, "CL": 0.3, "V": 0.3})


def fit_once(data):
    t = time.perf_counter()
    r = fit_population(ORAL, data, tj.Population(ORAL, **START), ErrorModel("additive", add=1.0))
    return r, time.perf_counter() - t


def resampled_dataset(counts: np.ndarray):
    """The theophylline records with subject ``i`` repeated ``counts[i]`` times (new IDs)."""
    frame = pd.read_csv(D.path("theophylline"))
    ids = sorted(frame.ID.unique())
    parts, new = [], 1
    for i, c in zip(ids, counts):
        for _ in range(int(c)):
            part = frame[frame.ID == i].copy()
            part["ID"] = new
            parts.append(part)
            new += 1
    buf = io.StringIO(pd.concat(parts).to_csv(index=False))
    return read_nonmem(buf, compartments=D._COMPARTMENTS["theophylline"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="resamples B")
    ap.add_argument("--check", type=int, default=2, help="resamples also fitted one by one")
    ap.add_argument("--batch", type=int, default=None, help="resamples per compiled call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="folder (default results/)")
    ap.add_argument("--name", default="bootstrap.json", help="result file name")
    ap.add_argument("--reps", type=int, default=2, help="bootstrap runs (the first compiles)")
    args = ap.parse_args(argv)
    data = D.theophylline()

    fit, t_fit_cold = fit_once(data)
    _, t_fit_warm = fit_once(data)
    print(
        f"[{jax.default_backend()}] fit_population: {t_fit_cold:.1f} s (first), "
        f"{t_fit_warm:.1f} s (compiled)"
    )

    cov = {k: covariance_step(fit, data, kind=k).table for k in ("R", "sandwich")}

    runs = []
    for rep in range(max(1, args.reps)):
        t = time.perf_counter()
        bs = bootstrap(fit, data, n=args.n, seed=args.seed, batch=args.batch)
        runs.append(time.perf_counter() - t)
        print(
            f"[{jax.default_backend()}] bootstrap run {rep + 1}: B = {args.n}, "
            f"{runs[-1]:.1f} s, {bs.n_calls} batched calls, {int(bs.converged.sum())} "
            f"converged, {bs.n_not_converged} not converged, {bs.n_failed} failed"
        )
    print(bs.table.to_string())

    W = resample_counts(fit.n_subjects, args.n, args.seed)
    checks = []
    for b in range(min(args.check, args.n)):
        rb, tb = fit_once(resampled_dataset(W[b]))
        mine = bs.estimates[b]
        ref = rb.estimates.estimate.to_numpy()
        checks.append(
            dict(
                resample=b,
                fit_population=dict(zip(rb.estimates.index, ref.tolist())),
                bootstrap=dict(zip(bs.labels, mine.tolist())),
                max_rel_diff=float(np.max(np.abs(mine / ref - 1))),
                ofv_fit_population=rb.ofv,
                ofv_bootstrap=float(bs.ofv[b]),
                fit_s=tb,
            )
        )
        print(
            f"resample {b}: max relative difference vs fit_population "
            f"{checks[-1]['max_rel_diff']:.2e}"
        )

    steady = runs[-1]
    payload = dict(
        benchmark="bootstrap",
        problem="theophylline FOCE-I (12 subjects, 1-cmt oral, IIV KA/CL/V, additive error)",
        command="python benchmarks/bootstrap.py " + " ".join(argv or sys.argv[1:]),
        backend=jax.default_backend(),
        devices=[str(d) for d in jax.devices()],
        B=args.n,
        seed=args.seed,
        batch=args.batch or args.n,
        bootstrap_wall_s_first=runs[0],
        bootstrap_wall_s=steady,
        per_resample_s=steady / args.n,
        batched_calls=bs.n_calls,
        bfgs_iterations=bs.n_iter,
        converged=int(bs.converged.sum()),
        not_converged=bs.n_not_converged,
        failed=bs.n_failed,
        fit_population_s_first=t_fit_cold,
        fit_population_s=t_fit_warm,
        sequential_estimate_s=t_fit_warm * args.n,
        speedup_vs_sequential=t_fit_warm * args.n / steady,
        table=bs.table.reset_index().to_dict(orient="records"),
        covariance_step={k: v.reset_index().to_dict(orient="records") for k, v in cov.items()},
        checks=checks,
        machine=C.machine_info(),
    )
    path = C.write_json(args.name, payload, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
