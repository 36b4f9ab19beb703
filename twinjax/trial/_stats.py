"""Trial statistics: arm summaries, between-arm comparisons, multiplicity, subgroups and power.

Every comparison is ``arm - control`` and reports an interval together with a test that
agrees with it.

Binary endpoints (difference in proportions)
    Interval: Newcombe's hybrid score interval (Newcombe 1998, method 10), built from the
    Wilson score intervals of the two arms; it always lies within ``[-1, 1]`` and stays
    informative with zero events (0/50 vs 0/50 gives about ``[-0.071, 0.071]``).
    Test: the p-value of that same interval, found by inverting it: ``p`` is the ``alpha``
    at which the ``(1 - alpha)`` Newcombe interval has 0 as its end point, so the interval
    excludes 0 exactly when ``p < alpha`` (no "CI excludes 0 but p = 0.052"). Fisher's exact
    p-value (two-sided, SciPy) is kept as ``p_fisher`` for reference only; it is not
    consistent with the interval (0/50 vs 5/50: the interval excludes 0, Fisher p = 0.056).
    Per-arm rates: the Wilson interval, or the exact Clopper-Pearson interval when the arm
    has no events (or only events), where Wilson is least accurate.

Continuous endpoints (difference in means)
    Welch's unequal-variance t-test with its interval (Welch 1947): the primary analysis.
    When a baseline is given (``change`` endpoints), also ANCOVA: the OLS fit of the
    endpoint on ``1 + arm + baseline`` with the arm coefficient, its t interval and p-value
    (classical OLS standard errors, residual df ``n - 3``) as ``ancova_*``.

Multiplicity
    The arms compared with the control are one family per endpoint; :func:`adjust` adds
    Holm's step-down adjusted p-values (``p_adjusted``, and ``ancova_p_adjusted``) and the
    method name (``adjustment``). Intervals are not adjusted; subgroups are exploratory
    and not adjusted.

Power
    The fraction of replicate trials whose reported p-value is below ``alpha``, with its
    Monte Carlo standard error ``sqrt(power (1 - power) / replicates)``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

P_FLOOR = 0.001


def format_p(p, floor: float = P_FLOOR) -> str:
    """A p-value for reports: ``"< 0.001"`` below ``floor``, else 3 significant digits.

    Never ``"0"`` nor ``"7.995e-289"``; ``"NA"`` when missing.
    """
    if p is None:
        return "NA"
    p = float(p)
    if not math.isfinite(p):
        return "NA"
    if p < floor:
        return f"< {floor:g}"
    return f"{min(p, 1.0):#.3g}"


def _z(alpha: float) -> float:
    return float(sps.norm.ppf(1 - alpha / 2))


def _wilson_z(events: int, n: int, z: float) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    z2 = z * z
    centre = (events + z2 / 2) / (n + z2)
    half = z / (n + z2) * math.sqrt(events * (n - events) / n + z2 / 4)
    lo = 0.0 if events == 0 else max(0.0, centre - half)
    hi = 1.0 if events == n else min(1.0, centre + half)
    return lo, hi


def wilson(events: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a proportion ``events / n``."""
    return _wilson_z(int(events), int(n), _z(alpha))


def clopper_pearson(events: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for a proportion, ``alpha / 2`` in each tail."""
    events, n = int(events), int(n)
    if n == 0:
        return math.nan, math.nan
    lo = 0.0 if events == 0 else float(sps.beta.ppf(alpha / 2, events, n - events + 1))
    hi = 1.0 if events == n else float(sps.beta.isf(alpha / 2, events + 1, n - events))
    return lo, hi


def proportion_ci(events: int, n: int, alpha: float = 0.05) -> tuple[float, float, str]:
    """``(low, high, method)``: Wilson, or exact Clopper-Pearson with 0 or ``n`` events."""
    if events in (0, n):
        return (*clopper_pearson(events, n, alpha), "Clopper-Pearson (exact)")
    return (*wilson(events, n, alpha), "Wilson")


def summarize(values: np.ndarray, binary: bool, alpha: float = 0.05) -> dict:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if binary:
        n, events = int(v.size), int(v.sum())
        lo, hi, method = proportion_ci(events, n, alpha) if n else (math.nan, math.nan, "")
        return {
            "n": n,
            "events": events,
            "rate": events / n if n else math.nan,
            "ci_low": lo,
            "ci_high": hi,
            "ci_method": method,
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


def _finite(a) -> np.ndarray:
    a = np.asarray(a, float)
    return a[np.isfinite(a)]


# --- continuous ----------------------------------------------------------------------------


def welch(x: np.ndarray, y: np.ndarray, alpha: float = 0.05) -> dict:
    """Difference ``mean(y) - mean(x)``, its Welch ``(1-alpha)`` CI and two-sided p-value.

    Non-finite values are left out. Two constant arms: the CI is the point difference and
    p is 0 (different) or 1 (equal).
    """
    x, y = _finite(x), _finite(y)
    nx, ny = x.size, y.size
    out = {"test": "Welch t-test", "ci_method": "Welch t"}
    if nx < 2 or ny < 2:
        nan = math.nan
        diff = float(y.mean() - x.mean()) if nx and ny else nan
        return {"diff": diff, "ci_low": nan, "ci_high": nan, "p_value": nan,
                "statistic": nan, "df": nan, **out}  # fmt: skip
    vx, vy = x.var(ddof=1) / nx, y.var(ddof=1) / ny
    se = math.sqrt(vx + vy)
    diff = float(y.mean() - x.mean())
    if se == 0:
        stat = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        return {"diff": diff, "ci_low": diff, "ci_high": diff, "p_value": float(diff == 0),
                "statistic": stat, "df": float(nx + ny - 2), **out}  # fmt: skip
    df = (vx + vy) ** 2 / (vx**2 / (nx - 1) + vy**2 / (ny - 1))
    tstat = diff / se
    q = float(sps.t.ppf(1 - alpha / 2, df))
    return {
        "diff": diff,
        "ci_low": diff - q * se,
        "ci_high": diff + q * se,
        "p_value": float(2 * sps.t.sf(abs(tstat), df)),
        "statistic": float(tstat),
        "df": float(df),
        **out,
    }


def ancova(x, y, baseline_x, baseline_y, alpha: float = 0.05) -> dict:
    """ANCOVA: OLS of the endpoint on ``1 + arm + baseline`` (arm = 1 for ``y``).

    Returns the arm coefficient (``diff``, the baseline-adjusted difference), its
    ``(1-alpha)`` t interval, two-sided p-value, t statistic, standard error, residual
    df and the baseline ``slope``. Patients with a non-finite endpoint or baseline are
    left out; NaN when the model is not estimable (e.g. a constant baseline).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    bx, by = np.asarray(baseline_x, float), np.asarray(baseline_y, float)
    resp = np.r_[x, y]
    arm = np.r_[np.zeros(x.size), np.ones(y.size)]
    base = np.r_[bx, by]
    keep = np.isfinite(resp) & np.isfinite(base)
    resp, arm, base = resp[keep], arm[keep], base[keep]
    X = np.column_stack([np.ones(resp.size), arm, base])
    n = resp.size
    nan = math.nan
    keys = ("diff", "ci_low", "ci_high", "p_value", "statistic", "se", "df", "slope")
    res: dict = dict.fromkeys(keys, nan) | {"test": "ANCOVA (OLS on arm + baseline)"}
    if n <= 3 or np.linalg.matrix_rank(X) < 3:
        return res
    coef, *_ = np.linalg.lstsq(X, resp, rcond=None)
    resid = resp - X @ coef
    df = n - 3
    sigma2 = float(resid @ resid) / df
    cov = sigma2 * np.linalg.inv(X.T @ X)
    se = math.sqrt(cov[1, 1])
    diff = float(coef[1])
    q = float(sps.t.ppf(1 - alpha / 2, df))
    if se == 0:
        p, t = float(diff == 0), (0.0 if diff == 0 else math.copysign(math.inf, diff))
    else:
        t = diff / se
        p = float(2 * sps.t.sf(abs(t), df))
    res.update(
        diff=diff,
        ci_low=diff - q * se,
        ci_high=diff + q * se,
        p_value=p,
        statistic=float(t),
        se=se,
        df=float(df),
        slope=float(coef[2]),
    )
    return res


# --- binary --------------------------------------------------------------------------------


def _newcombe_z(ex: int, nx: int, ey: int, ny: int, z: float) -> tuple[float, float]:
    px, py = ex / nx, ey / ny
    lx, ux = _wilson_z(ex, nx, z)
    ly, uy = _wilson_z(ey, ny, z)
    d = py - px
    lo = d - math.hypot(py - ly, ux - px)
    hi = d + math.hypot(uy - py, px - lx)
    return max(-1.0, lo), min(1.0, hi)


def newcombe(ex: int, nx: int, ey: int, ny: int, alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe hybrid score interval for ``ey/ny - ex/nx`` (Wilson-based, within [-1, 1])."""
    return _newcombe_z(int(ex), int(nx), int(ey), int(ny), _z(alpha))


@functools.lru_cache(maxsize=65536)
def newcombe_test(ex: int, nx: int, ey: int, ny: int) -> tuple[float, float]:
    """``(p, z)``: the two-sided p-value that inverts the Newcombe interval.

    ``z`` is the normal quantile at which the Newcombe interval's end point nearest 0
    reaches 0 (signed like the difference) and ``p = 2 (1 - Phi(|z|))``: the ``(1 - alpha)``
    interval excludes 0 exactly when ``p < alpha``, because the interval widens
    monotonically with the quantile.
    """
    d = ey / ny - ex / nx
    if d == 0:
        return 1.0, 0.0
    if d < 0:
        p, z = newcombe_test(ey, ny, ex, nx)
        return p, -z

    def bound(z):  # lower end point minus 0; d > 0 at z = 0, negative for large z
        return _newcombe_z(ex, nx, ey, ny, z)[0]

    hi = 8.0
    while bound(hi) > 0:
        hi *= 2
    z = optimize.brentq(bound, 0.0, hi, xtol=1e-13, rtol=4 * np.finfo(float).eps)
    return float(2 * sps.norm.sf(z)), float(z)


def risk_difference(x: np.ndarray, y: np.ndarray, alpha: float = 0.05) -> dict:
    """Rate difference ``rate(y) - rate(x)`` with the Newcombe interval and its own test.

    ``p_value`` inverts the Newcombe interval (so the interval and the test agree);
    ``p_fisher`` is Fisher's exact two-sided p-value, for reference.
    """
    x, y = _finite(x).astype(bool), _finite(y).astype(bool)
    nx, ny, ex, ey = int(x.size), int(y.size), int(x.sum()), int(y.sum())
    out = {"test": "Newcombe score (interval inversion)", "ci_method": "Newcombe hybrid score"}
    if nx == 0 or ny == 0:
        nan = math.nan
        return {"diff": nan, "ci_low": nan, "ci_high": nan, "p_value": nan,
                "statistic": nan, "df": nan, **out, "p_fisher": nan}  # fmt: skip
    lo, hi = newcombe(ex, nx, ey, ny, alpha)
    p, z = newcombe_test(ex, nx, ey, ny)
    table = [[ey, ny - ey], [ex, nx - ex]]
    return {
        "diff": ey / ny - ex / nx,
        "ci_low": lo,
        "ci_high": hi,
        "p_value": p,
        "statistic": z,
        "df": math.nan,
        **out,
        "p_fisher": float(sps.fisher_exact(table).pvalue),
    }


def compare(x, y, binary: bool, alpha: float = 0.05, baseline_x=None, baseline_y=None) -> dict:
    """``arm (y) - control (x)``: :func:`risk_difference` or :func:`welch`; with baselines
    (continuous endpoints) also :func:`ancova` as ``ancova_diff``, ``ancova_ci_low``,
    ``ancova_ci_high``, ``ancova_p``."""
    if binary:
        return risk_difference(x, y, alpha)
    r = welch(x, y, alpha)
    if baseline_x is not None and baseline_y is not None:
        a = ancova(x, y, baseline_x, baseline_y, alpha)
        r.update(
            ancova_diff=a["diff"],
            ancova_ci_low=a["ci_low"],
            ancova_ci_high=a["ci_high"],
            ancova_p=a["p_value"],
        )
    return r


# --- multiplicity --------------------------------------------------------------------------


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaNs are left out of the family and stay NaN."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * q[order])
    adj = np.empty(m)
    adj[order] = np.minimum(stepped, 1.0)
    out[ok] = adj
    return out


ADJUSTMENTS = {"holm": ("Holm", holm)}


def adjust(comparisons: pd.DataFrame, method: str = "holm", by: str = "endpoint") -> pd.DataFrame:
    """Add multiplicity-adjusted p-values over the arms compared with the control.

    Each ``by`` group (an endpoint) is one family. Adds ``p_adjusted`` (from ``p_value``),
    ``ancova_p_adjusted`` when there is an ``ancova_p`` column, and ``adjustment`` with
    the method's name.
    """
    name, fn = ADJUSTMENTS[method]
    out = comparisons.copy()
    if not len(out):
        return out
    for src, dst in (("p_value", "p_adjusted"), ("ancova_p", "ancova_p_adjusted")):
        if src not in out:
            continue
        col = np.full(len(out), np.nan)
        for _, idx in out.groupby(by, sort=False).indices.items():
            col[idx] = fn(out[src].to_numpy(float)[idx])
        pos = out.columns.get_loc(src) + 1
        out.insert(pos, dst, col)
    out["adjustment"] = name
    return out


# --- subgroups and power -------------------------------------------------------------------


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
    ones split at the pooled median (exploratory: no multiplicity adjustment)."""
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
    """Power (fraction of replicate trials with p < alpha) at each per-arm size, with its
    Monte Carlo standard error ``sqrt(power (1 - power) / replicates)``.

    Each replicate draws ``n`` distinct virtual patients per arm from the simulated
    pools (without replacement within a replicate) and applies the reported test
    (Welch for continuous endpoints, the Newcombe interval's test for binary ones).
    """
    out = []
    x_pool = _finite(x_pool)
    y_pool = _finite(y_pool)
    for n in sizes:
        if n > min(x_pool.size, y_pool.size) or n < 2:
            continue
        hits = 0
        for _ in range(replicates):
            xs = rng.choice(x_pool, n, replace=False)
            ys = rng.choice(y_pool, n, replace=False)
            if binary:
                p = newcombe_test(int(xs.sum()), n, int(ys.sum()), n)[0]
            else:
                p = welch(xs, ys, alpha)["p_value"]
            hits += p < alpha
        pw = hits / replicates
        out.append(
            {
                "n_per_arm": int(n),
                "power": pw,
                "mc_se": math.sqrt(pw * (1 - pw) / replicates),
                "replicates": replicates,
            }
        )
    return pd.DataFrame(out)


def analytic_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of a two-sided two-sample t-test (noncentral t), equal n and SD."""
    df = 2 * n - 2
    nc = delta / (sd * math.sqrt(2.0 / n))
    q = sps.t.ppf(1 - alpha / 2, df)
    return float(sps.nct.sf(q, df, nc) + sps.nct.cdf(-q, df, nc))
