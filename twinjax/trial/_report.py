"""The trial report: one self-contained HTML file with embedded figures."""

from __future__ import annotations

import base64
import html
import io
import pathlib

import numpy as np

from ._stats import format_p


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def figure_bands(result):
    """Median and 5-95 % percentile bands of up to four outputs, one line per arm.

    Arguments:
        result: a :class:`~twinjax.trial.TrialResult`.

    Returns:
        A matplotlib figure.
    """
    import matplotlib.pyplot as plt

    tr = result.trial
    first = [e.output for e in tr.endpoints if e.output in tr.outputs]
    outs = list(dict.fromkeys(first + list(tr.outputs)))[:4]
    fig, axes = plt.subplots(1, len(outs), figsize=(5 * len(outs), 3.6), squeeze=False)
    for ax, o in zip(axes[0], outs):
        for arm, b in result.bands.items():
            q = b[o]
            ok = np.isfinite(q[2])  # per-beat outputs exist only at the beat times
            t = np.asarray(result.times)[ok]
            style = "o-" if ok.sum() < len(ok) else "-"
            (line,) = ax.plot(t, q[2][ok], style, label=arm)
            ax.fill_between(t, q[0][ok], q[4][ok], color=line.get_color(), alpha=0.15)
        ax.set_title(o)
        ax.set_xlabel("time")
    axes[0][0].legend(title="median, 5-95%")
    fig.tight_layout()
    return fig


def figure_endpoints(result):
    import matplotlib.pyplot as plt

    eps = result.trial.endpoints
    fig, axes = plt.subplots(1, len(eps), figsize=(4.5 * len(eps), 3.4), squeeze=False)
    ok = result.table[result.table["status"] == 0]
    arms = [a.name for a in result.trial.arms]
    for ax, e in zip(axes[0], eps):
        if e.binary:
            rates = [ok.loc[ok["arm"] == a, e.name].mean() for a in arms]
            ax.bar(arms, rates)
            ax.set_ylabel("rate")
        else:
            data = [ok.loc[ok["arm"] == a, e.name].dropna().to_numpy() for a in arms]
            ax.boxplot(data, tick_labels=arms, showfliers=False)
        ax.set_title(e.name)
    fig.tight_layout()
    return fig


def figure_forest(result):
    import matplotlib.pyplot as plt

    rows = result.comparisons.assign(subgroup="all")
    if len(result.subgroups):
        import pandas as pd

        rows = pd.concat([rows, result.subgroups], ignore_index=True)
    if not len(rows):
        return None
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    ax.errorbar(
        rows["diff"],
        y,
        xerr=[rows["diff"] - rows["ci_low"], rows["ci_high"] - rows["diff"]],
        fmt="o",
        capsize=3,
    )
    ax.axvline(0.0, color="grey", lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels(
        [f"{r.endpoint} | {r.arm} | {r.subgroup}" for r in rows.itertuples()], fontsize=8
    )
    ax.set_xlabel(f"difference vs {result.trial.control} ({_level(result.trial.alpha)} CI)")
    fig.tight_layout()
    return fig


def figure_power(result):
    import matplotlib.pyplot as plt

    if not len(result.power):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (ep, arm), g in result.power.groupby(["endpoint", "arm"]):
        ax.errorbar(
            g["n_per_arm"],
            g["power"],
            yerr=1.96 * g["mc_se"],
            marker="o",
            label=f"{ep}: {arm}",
            capsize=2,
        )
    ax.axhline(0.8, ls="--", color="grey", lw=1)
    ax.set_xlabel("patients per arm")
    ax.set_ylabel("power")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _table(df, floatfmt="{:.4g}") -> str:
    if df is None or not len(df):
        return "<p><em>none</em></p>"
    return df.to_html(index=False, float_format=lambda v: floatfmt.format(v), border=0, classes="t")


def _level(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


# p-value columns and how the report names them; intervals as "[low, high]" columns
P_COLUMNS = {
    "p_value": "p",
    "p_adjusted": "p adjusted",
    "ancova_p": "ANCOVA p",
    "ancova_p_adjusted": "ANCOVA p adjusted",
}
CI_COLUMNS = {("ci_low", "ci_high"): "{} CI", ("ancova_ci_low", "ancova_ci_high"): "ANCOVA {} CI"}
RENAME = {"ancova_diff": "ANCOVA diff", "ci_method": "CI method", "mc_se": "Monte Carlo SE"}
HIDDEN = ("p_fisher",)  # in summary.json; not the test that goes with the interval


def _stat_table(df, alpha: float) -> str:
    """A table of statistics: intervals in one column, p-values with :func:`format_p`."""
    if df is None or not len(df):
        return _table(df)
    df = df.drop(columns=[c for c in HIDDEN if c in df])
    level = _level(alpha)
    for (lo, hi), label in CI_COLUMNS.items():
        if lo in df and hi in df:
            text = [
                "" if not (np.isfinite(a) and np.isfinite(b)) else f"[{a:.4g}, {b:.4g}]"
                for a, b in zip(df[lo].to_numpy(float), df[hi].to_numpy(float))
            ]
            pos = df.columns.get_loc(lo)
            df = df.drop(columns=[lo, hi])
            df.insert(pos, label.format(level), text)
    for col in P_COLUMNS:
        if col in df:
            df[col] = ["" if v is None or v != v else format_p(v) for v in df[col]]
    df = df.rename(columns={**P_COLUMNS, **RENAME})
    return df.to_html(index=False, float_format="{:.4g}".format, na_rep="", border=0, classes="t")


def _methods(result) -> str:
    """What the comparison tables report: intervals, tests and the multiplicity adjustment."""
    tr = result.trial
    ctl = html.escape(tr.control)
    level, k = _level(tr.alpha), len(tr.arms) - 1
    comp = result.comparisons
    adj = comp["adjustment"].iloc[0] if len(comp) and "adjustment" in comp else "no"
    return (
        f"<p>Differences are arm minus {ctl} with {level} confidence intervals. "
        "Continuous endpoints: Welch's t-test and its interval; change-from-baseline endpoints "
        "also ANCOVA (OLS of the endpoint on arm and baseline). Binary endpoints: Newcombe's "
        "hybrid score interval (from Wilson intervals) with the p-value that inverts it, so "
        f"the {level} interval excludes 0 exactly when p &lt; {tr.alpha:g} (Fisher's exact p "
        "is in summary.json as p_fisher); per-arm rates have Wilson intervals, exact "
        "Clopper-Pearson ones when an arm has no events (or only events).</p>"
        f"<p>Multiplicity: {html.escape(str(adj))} step-down adjustment of the p-values over "
        f"the {k} arm{'s' if k != 1 else ''} compared with {ctl}, within each endpoint "
        "(column 'p adjusted'); intervals and subgroup analyses are not adjusted. "
        f"p-values below 0.001 are shown as &lt; 0.001.</p>"
    )


def write_report(result, path) -> pathlib.Path:
    """Write the HTML report of a :class:`TrialResult` to ``path``.

    The figures are drawn with whatever matplotlib backend is active (the library never
    switches it: a notebook keeps its inline figures) and closed once embedded.
    """
    tr = result.trial
    figs = [
        ("Percentile bands per arm", figure_bands(result)),
        ("Endpoint distributions", figure_endpoints(result)),
        ("Forest plot of effects and subgroups", figure_forest(result)),
        ("Power curve from replicate trials", figure_power(result)),
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(tr.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table.t{border-collapse:collapse;font-size:13px}img{max-width:100%;height:auto}"
        "table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd}</style>",
        "</head><body>",
        f"<h1>{html.escape(tr.name)}</h1>",
        f"<p>Model: {html.escape(type(tr.model).__name__)}; {len(result.table)} virtual patients "
        f"in {len(tr.arms)} arms; seed {tr.seed}; simulated in {result.seconds:.1f} s; "
        f"{int((result.table['status'] != 0).sum())} failed simulations (excluded).</p>",
        "<h2>Arms</h2><ul>",
    ]
    for a in tr.arms:
        reg = (
            "placebo (no drug)"
            if a.regimen is None
            else html.escape(
                "; ".join(
                    f"{d.amt} into {d.cmt} at t={d.time}"
                    + (f", every {d.ii} x{d.addl + 1}" if d.addl else "")
                    for d in a.regimen.doses
                    if hasattr(d, "amt")
                )
            )
        )
        parts.append(f"<li><b>{html.escape(a.name)}</b> (n={a.n or tr.n_per_arm}): {reg}</li>")
    parts.append("</ul><h2>Endpoint summaries</h2>" + _stat_table(result.summary, tr.alpha))
    parts.append(
        f"<h2>Comparisons with {html.escape(tr.control)}</h2>"
        + _methods(result)
        + _stat_table(result.comparisons, tr.alpha)
    )
    if len(result.subgroups):
        parts.append(
            "<h2>Subgroups</h2><p>Exploratory: no multiplicity adjustment.</p>"
            + _stat_table(result.subgroups, tr.alpha)
        )
    if len(result.power):
        parts.append(
            f"<h2>Power</h2><p>Fraction of {tr.replicates} replicate trials per size with "
            f"p &lt; {tr.alpha:g} (unadjusted), with its Monte Carlo standard error "
            "sqrt(power (1 - power) / replicates).</p>" + _stat_table(result.power, tr.alpha)
        )
    for title, fig in figs:
        if fig is None:
            continue
        parts.append(
            f"<h2>{title}</h2><img alt='{title}' src='data:image/png;base64,{_png(fig)}'/>"
        )
    parts.append("</body></html>")
    path = pathlib.Path(path)
    path.write_text("\n".join(parts))
    return path
