"""Paired comparison of the population methods on the coverage study's replicates.

``coverage_population.py`` fits the same simulated datasets (seed ``1000 + r`` for
replicate ``r``) with SAEM (``--method saem``), FOCE-I (``--method focei``: the
first-order curvature on the censored records) and the Laplace objective with the
exact curvature (``--method laplace``, ``fit_population``'s default with censored
records). For every replicate that two methods both fitted (M3, converged), this
script takes the relative difference of their estimates, ``(a - b) / b``, and writes
its mean, the standard error of that mean and the number of pairs per parameter to
``results/coverage_methods_paired.json``.

SAEM maximises the likelihood itself; if a method's estimates differ from SAEM's on the
same data by a mean that is many standard errors from 0, that method is biased relative
to the maximum-likelihood estimate (a property of its approximation, not of sampling).

Run::

    python calibration/compare_methods.py
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results"
METHODS = ("saem", "focei", "laplace")
PAIRS = (("focei", "saem"), ("laplace", "saem"), ("laplace", "focei"))


def estimates(method: str) -> pd.DataFrame | None:
    """``replicate x parameter`` table of a method's converged M3 estimates (main run
    only: the replicates of seed 1000 + r)."""
    path = RESULTS / f"coverage_population_{method}.csv"
    if not path.exists():
        return None
    meta = json.loads(path.with_suffix(".json").read_text())
    seeds = {rep["replicate"]: rep["seed"] for rep in meta["replicates"]}
    t = pd.read_csv(path)
    t = t[(t["censoring"] == "m3") & t["converged"].astype(bool)]
    t = t[t["replicate"].map(seeds) == 1000 + t["replicate"]]
    return t.pivot(index="replicate", columns="parameter", values="estimate")


def paired(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    common = a.index.intersection(b.index)
    out = {"n_pairs": int(len(common)), "replicates": [int(r) for r in common], "params": {}}
    for p in a.columns:
        d = ((a.loc[common, p] - b.loc[common, p]) / b.loc[common, p]).to_numpy(float)
        if d.size < 2:
            continue
        out["params"][p] = {
            "mean_rel_diff_pct": 100 * float(np.mean(d)),
            "se_pct": 100 * float(np.std(d, ddof=1) / np.sqrt(d.size)),
            "max_abs_rel_diff_pct": 100 * float(np.max(np.abs(d))),
        }
    return out


def main() -> int:
    tables = {m: estimates(m) for m in METHODS}
    doc = {
        "study": "paired differences of M3 estimates between methods, coverage_population.py",
        "updated_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "definition": "(a - b) / b per replicate, in %; mean, its SE, max |.|",
        "pairs": {},
    }
    for a, b in PAIRS:
        if tables[a] is None or tables[b] is None:
            continue
        res = paired(tables[a], tables[b])
        doc["pairs"][f"{a}_vs_{b}"] = res
        print(f"{a} vs {b}: {res['n_pairs']} replicates")
        for p, v in res["params"].items():
            print(
                f"  {p:24s} {v['mean_rel_diff_pct']:+7.3f} % (SE {v['se_pct']:.3f}; "
                f"max |d| {v['max_abs_rel_diff_pct']:.2f} %)"
            )
    (RESULTS / "coverage_methods_paired.json").write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
