"""The trial report's figures: time-course bands, endpoint distributions, forest
plots, power curves and the sensitivity figures (one colour per arm throughout)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._report_format import (
    arm_colours,
    ci_level,
    difference_unit,
    endpoint_unit,
    legend_outside,
    output_unit,
)


def analysed(result, e) -> pd.DataFrame:
    """The analysis population of an endpoint (as in the statistics)."""
    t = result.table[result.table["status"] == 0]
    var = result.trial.variability
    if var is not None and var.dropout is not None and var.dropout.analysis == "completers":
        t = t[~t["dropped"].to_numpy(bool)]
    return t


def figure_bands(result):
    """Median and 5-95 % percentile bands of up to four outputs, one colour per arm.

    Outputs saved on the grid are drawn as a line with a band; per-beat outputs (only at
    the beat times) as medians with 5-95 % bars at those times, not as lines.

    Arguments:
        result: a :class:`~twinjax.trial.TrialResult`.

    Returns:
        A matplotlib figure.
    """
    import matplotlib.pyplot as plt

    tr = result.trial
    first = [e.output for e in tr.endpoints if e.output in tr.outputs]
    outs = list(dict.fromkeys(first + list(tr.outputs)))[:4]
    arms = [a.name for a in tr.arms]
    col = arm_colours(arms)
    tu = getattr(tr.model, "time_unit", None)
    ncol = min(2, len(outs))
    nrow = -(-len(outs) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.0 * ncol + 1.6, 3.3 * nrow), squeeze=False)
    times = np.asarray(result.times)
    flat = list(axes.ravel())
    for ax in flat[len(outs) :]:
        ax.set_visible(False)
    for ax, o in zip(flat, outs):
        beats = False
        for k, (arm, b) in enumerate(result.bands.items()):
            q = b[o]
            ok = np.isfinite(q[2])
            t = times[ok]
            c = col.get(arm, None)
            if ok.sum() < len(ok):  # per-beat: only at the beat times, arms side by side
                beats = True
                x = np.arange(t.size) + (k - (len(arms) - 1) / 2) * 0.18
                ax.errorbar(
                    x,
                    q[2][ok],
                    yerr=[q[2][ok] - q[0][ok], q[4][ok] - q[2][ok]],
                    fmt="o",
                    color=c,
                    capsize=3,
                    label=arm,
                )
                ax.set_xticks(np.arange(t.size), [f"{v:g}" for v in t])
            else:
                ax.plot(t, q[2][ok], "-", color=c, label=arm)
                ax.fill_between(t, q[0][ok], q[4][ok], color=c, alpha=0.15)
        ax.set_title(f"{o} (at the beat times)" if beats else o)
        ax.set_xlabel(f"time ({tu})" if tu else "time")
        u = output_unit(tr.model, o)
        ax.set_ylabel(f"{o} ({u})" if u else o)
    leg = axes[0][-1].legend(
        title="median, 5-95%", loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8
    )
    legend_outside(fig, leg, 1.6)
    return fig


def figure_endpoint(result, e):
    """The distribution of one endpoint per arm: box (quartiles) with 5-95 % whiskers and
    the mean for a continuous endpoint; the event rate (%) with its interval for a
    binary one."""
    import matplotlib.pyplot as plt

    tr = result.trial
    arms = [a.name for a in tr.arms]
    col = arm_colours(arms)
    unit = endpoint_unit(tr, e)
    fig, ax = plt.subplots(figsize=(max(3.6, 0.95 * len(arms) + 1.7), 3.0))
    if e.binary:
        s = result.summary[result.summary["endpoint"] == e.name].set_index("arm")
        rate = np.array([100 * float(s.loc[a, "rate"]) for a in arms])
        lo = np.array([100 * float(s.loc[a, "ci_low"]) for a in arms])
        hi = np.array([100 * float(s.loc[a, "ci_high"]) for a in arms])
        x = np.arange(len(arms))
        ax.bar(x, np.nan_to_num(rate), color=[col[a] for a in arms], alpha=0.8)
        good = np.isfinite(lo) & np.isfinite(hi)
        ax.errorbar(
            x[good],
            rate[good],
            yerr=[rate[good] - lo[good], hi[good] - rate[good]],
            fmt="none",
            ecolor="black",
            capsize=4,
        )
        for i, a in enumerate(arms):
            ev, n = s.loc[a, "events"], s.loc[a, "n"]
            if np.isfinite(ev) and np.isfinite(n):
                top = hi[i] if np.isfinite(hi[i]) else np.nan_to_num(rate[i])
                ax.annotate(
                    f"{int(ev)}/{int(n)}",
                    (i, top),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                )
        ax.set_xticks(x, arms)
        ax.set_ylabel(f"patients with event (%), {ci_level(tr.alpha)} CI")
        ax.set_ylim(0, max(5.0, float(np.nanmax(np.r_[hi, rate, 0.0])) * 1.18))
    else:
        ok = analysed(result, e)
        data = [ok.loc[ok["arm"] == a, e.name].to_numpy(float) for a in arms]
        data = [d[np.isfinite(d)] for d in data]
        pos = [i for i, d in enumerate(data) if d.size]
        if pos:
            bp = ax.boxplot(
                [data[i] for i in pos],
                positions=pos,
                whis=(5, 95),
                showfliers=False,
                showmeans=True,
                patch_artist=True,
                widths=0.5,
            )
            for i, patch in zip(pos, bp["boxes"]):
                patch.set_facecolor(col[arms[i]])
                patch.set_alpha(0.5)
        ax.set_xticks(range(len(arms)), arms)
        ax.set_xlim(-0.6, len(arms) - 0.4)
        ax.set_ylabel(f"{e.name} ({unit})" if unit else e.name)
    ax.set_title(e.name)
    if sum(len(a) for a in arms) > 30:  # long arm names: slanted, not overlapping
        plt.setp(ax.get_xticklabels(), rotation=25, ha="right")
    fig.tight_layout()
    return fig


def figure_forest(result, unit: str | None = None):
    """Differences (arm - control) with their intervals for the endpoints whose
    difference is in ``unit`` (see :func:`difference_unit`); None when there are none.

    Without ``unit``: the family of the primary endpoint."""
    import matplotlib.pyplot as plt

    tr = result.trial
    if unit is None:
        unit = difference_unit(tr, tr.endpoints[0])
    eps = {e.name: e for e in tr.endpoints if difference_unit(tr, e) == unit}
    rows = result.comparisons
    if not len(rows):
        return None
    rows = rows[rows["endpoint"].isin(list(eps)) & np.isfinite(rows["diff"].to_numpy(float))]
    if not len(rows):  # nothing estimable in this unit
        return None
    arms = [a.name for a in tr.arms]
    col = arm_colours(arms)
    scale = np.array([100.0 if eps[r].binary else 1.0 for r in rows["endpoint"]])
    d = rows["diff"].to_numpy(float) * scale
    lo = rows["ci_low"].to_numpy(float) * scale
    hi = rows["ci_high"].to_numpy(float) * scale
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.0))
    y = np.arange(len(rows))[::-1]
    for yi, di, li, hi_, arm in zip(y, d, lo, hi, rows["arm"]):
        good = np.isfinite(li) and np.isfinite(hi_)
        ax.errorbar(
            [di],
            [yi],
            xerr=[[di - li], [hi_ - di]] if good else None,
            fmt="s",
            color=col.get(arm),
            capsize=3,
        )
    ax.axvline(0.0, color="grey", lw=1)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_yticks(y, [f"{r.endpoint}: {r.arm}" for r in rows.itertuples()], fontsize=8)
    ax.set_xlabel(f"difference vs {tr.control} ({unit}), {ci_level(tr.alpha)} CI")
    fig.tight_layout()
    return fig


def figure_power(result, endpoint: str | None = None):
    """Power against patients per arm for one endpoint (default: the primary), one
    colour per arm, bars of 1.96 Monte Carlo SE, the legend outside the axes."""
    import matplotlib.pyplot as plt

    tr = result.trial
    endpoint = endpoint or tr.endpoints[0].name
    pw = result.power
    if not len(pw) or not (pw["endpoint"] == endpoint).any():
        return None
    pw = pw[pw["endpoint"] == endpoint]
    col = arm_colours([a.name for a in tr.arms])
    fig, ax = plt.subplots(figsize=(5.8, 3.0))
    sizes = sorted(set(int(v) for v in pw["n_per_arm"]))
    dodge = 0.012 * (max(sizes) - min(sizes) or 1.0)  # equal powers stay visible
    narms = pw["arm"].nunique()
    for k, (arm, g) in enumerate(pw.groupby("arm", sort=False)):
        ax.errorbar(
            g["n_per_arm"] + (k - (narms - 1) / 2) * dodge,
            g["power"],
            yerr=1.96 * g["mc_se"],
            marker="o",
            color=col.get(arm),
            label=f"{arm} vs {tr.control}",
            capsize=2,
        )
    ax.axhline(0.8, ls="--", color="grey", lw=1)
    ax.set_xticks(sizes)
    ax.set_xlabel("patients per arm")
    ax.set_ylabel(f"power (p < {tr.alpha:g})")
    ax.set_ylim(-0.03, 1.05)
    ax.set_title(endpoint)
    leg = ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    legend_outside(fig, leg, 2.0)
    return fig


def figure_tornado(result):
    """The tornado plot of the local sensitivities (None when there is none to draw)."""
    r = result.sensitivity
    if not r or r.get("local") is None or r.get("local_summary") is None:
        return None
    import matplotlib.pyplot as plt

    loc = r["local"]
    fig, ax = plt.subplots(figsize=(7.0, 0.42 * len(loc.parameters) + 1.6))
    loc.plot(ax=ax)
    ax.set_title(
        f"Local sensitivity of {loc.quantity}, {result.trial.sensitivity.arm} "
        f"({loc.n_patients} patients: median, 25-75 % box, 5-95 % whiskers)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def figure_sobol(result):
    """The Sobol' indices with their bootstrap intervals (None when not estimated)."""
    r = result.sensitivity
    if not r or r.get("sobol") is None:
        return None
    import matplotlib.pyplot as plt

    sob = r["sobol"]
    k = len(sob.parameters)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * k + 3.0), 3.6))
    sob.plot(ax=ax)
    leg = ax.get_legend()
    if leg is not None:
        legend_outside(fig, leg, 1.6)
    return fig
