"""Trial statistics: arm summaries, between-arm comparisons, subgroups and power.

Continuous endpoints: Welch's unequal-variance t-test and its confidence interval
for the difference in means (Welch 1947). Binary endpoints: the risk difference
with a Wald confidence interval and Fisher's exact test (two-sided).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps


def summarize(values: np.ndarray, binary: bool) -> dict:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if binary:
        return {
            "n": int(v.size),
            "events": int(v.sum()),
            "rate": float(v.mean()) if v.size else math.nan,
        }
    if v.size == 0:
        return {"n": 0}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan,
        "median": float(np.median(v)),
        "q05": float(np.quantile(v, 0.05)),
        "q95": float(np.quantile(v, 0.95)),
    }


def welch(x: np.ndarray, y: np.ndarray, alpha: float = 0.05) -> dict:
    """Difference ``mean(y) - mean(x)``, its (1-alpha) CI and the two-sided p-value."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    nx, ny = x.size, y.size
    vx, vy = x.var(ddof=1) / nx, y.var(ddof=1) / ny
    se = math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (nx - 1) + vy**2 / (ny - 1))
    diff = float(y.mean() - x.mean())
    tstat = diff / se if se > 0 else math.inf * np.sign(diff)
    p = float(2 * sps.t.sf(abs(tstat), df))
    q = float(sps.t.ppf(1 - alpha / 2, df))
    return {
        "diff": diff,
        "ci_low": diff - q * se,
        "ci_high": diff + q * se,
        "p_value": p,
        "statistic": float(tstat),
        "df": float(df),
        "test": "Welch t-test",
    }


def risk_difference(x: np.ndarray, y: np.ndarray, alpha: float = 0.05) -> dict:
    """Rate difference ``rate(y) - rate(x)`` with a Wald CI and Fisher's exact p-value."""
    x = np.asarray(x, bool)
    y = np.asarray(y, bool)
    px, py = x.mean(), y.mean()
    diff = float(py - px)
    se = math.sqrt(px * (1 - px) / x.size + py * (1 - py) / y.size)
    z = float(sps.norm.ppf(1 - alpha / 2))
    table = [[int(y.sum()), int(y.size - y.sum())], [int(x.sum()), int(x.size - x.sum())]]
    p = float(sps.fisher_exact(table).pvalue)
    return {
        "diff": diff,
        "ci_low": diff - z * se,
        "ci_high": diff + z * se,
        "p_value": p,
        "statistic": math.nan,
        "df": math.nan,
        "test": "Fisher exact",
    }


def compare(x, y, binary: bool, alpha: float = 0.05) -> dict:
    return risk_difference(x, y, alpha) if binary else welch(x, y, alpha)


def subgroups(
    table: pd.DataFrame,
    endpoint: str,
    binary: bool,
    control: str,
    arms: list,
    covariates: list[str],
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Treatment effects within subgroups: categorical covariates by level, continuous
    ones split at the pooled median."""
    rows = []
    for c in covariates:
        if c not in table:
            continue
        col = table[c]
        if col.nunique() <= 5:
            groups = {f"{c}={v:g}": col == v for v in sorted(col.unique())}
        else:
            med = float(col.median())
            groups = {f"{c}<{med:.3g}": col < med, f"{c}>={med:.3g}": col >= med}
        for label, mask in groups.items():
            sub = table[mask]
            x = sub.loc[sub["arm"] == control, endpoint].to_numpy()
            for arm in arms:
                if arm == control:
                    continue
                y = sub.loc[sub["arm"] == arm, endpoint].to_numpy()
                if x.size < 3 or y.size < 3:
                    continue
                r = compare(x, y, binary, alpha)
                rows.append(
                    {
                        "endpoint": endpoint,
                        "arm": arm,
                        "subgroup": label,
                        "n_control": int(x.size),
                        "n_arm": int(y.size),
                        **r,
                    }
                )
    return pd.DataFrame(rows)


def power_curve(x_pool, y_pool, sizes, replicates: int, binary: bool, alpha: float, rng):
    """Power (fraction of replicate trials with p < alpha) at each per-arm size.

    Each replicate draws ``n`` distinct virtual patients per arm from the simulated
    pools (without replacement within a replicate).
    """
    out = []
    x_pool = np.asarray(x_pool)
    y_pool = np.asarray(y_pool)
    for n in sizes:
        if n > min(x_pool.size, y_pool.size) or n < 2:
            continue
        hits = 0
        for _ in range(replicates):
            xs = rng.choice(x_pool, n, replace=False)
            ys = rng.choice(y_pool, n, replace=False)
            hits += compare(xs, ys, binary, alpha)["p_value"] < alpha
        pw = hits / replicates
        out.append(
            {
                "n_per_arm": int(n),
                "power": pw,
                "replicates": replicates,
                "mc_se": math.sqrt(max(pw * (1 - pw), 1e-12) / replicates),
            }
        )
    return pd.DataFrame(out)


def analytic_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of a two-sided two-sample t-test (noncentral t), equal n and SD."""
    df = 2 * n - 2
    nc = delta / (sd * math.sqrt(2.0 / n))
    q = sps.t.ppf(1 - alpha / 2, df)
    return float(sps.nct.sf(q, df, nc) + sps.nct.cdf(-q, df, nc))
