"""The trial report: one self-contained HTML file with embedded figures.

Layout (what a trial team presents, first page first):

1. the design: arms with their regimens (dose units from the dosed compartment), sample
   sizes, duration and time unit, population and inclusion criteria, the sources of
   variability used, the statistics;
2. sample-size warnings (power-curve sizes that could not be drawn are listed, never
   dropped silently);
3. patients: simulated, failed simulations, dropouts and analysed, per arm;
4. the primary endpoint (the first endpoint of the trial): estimate per arm with its
   interval, the difference with the control, its interval and p-values formatted by
   :func:`~twinjax.trial._stats.format_p` (``< 0.001``, never ``0``);
5. one section per endpoint: its definition and unit, summary and comparison tables,
   its distribution per arm, its power curve (legend outside the axes);
6. one forest plot per unit family (differences in mmHg, in percentage points, in mg/L
   ... never on one axis);
7. time courses; the sensitivity analysis when the trial asks for one (a tornado of
   the local sensitivities with their table, Sobol' indices with their intervals);
   subgroups and power tables folded away (``<details>``); methods.

Every number carries its unit (in the cell or the column header); a missing value is an
empty cell, never ``nan``. Units come from :func:`output_unit`: the units a model
declares (``Model.output_units``, e.g. the quasi-static twin's per-beat metrics), the
unit of a state, or the table :data:`OUTPUT_UNITS` of the shipped models' derived
outputs; an endpoint's unit follows from its kind (:func:`endpoint_unit`).
"""

from __future__ import annotations

import base64
import html
import io
import math
import pathlib

import numpy as np
import pandas as pd

from ._stats import format_p

#: Units of the derived outputs (``observe``) of the shipped models, by class name.
#: Each is the unit of the state divided by the parameter it is computed from (checked
#: in tests/test_report.py): Compartmental ``C = central / V`` (mg / L); UVA/Padova
#: ``G = Gp / Vg`` (mg/kg / dL/kg), ``I = Ip / Vi`` (pmol/kg / L/kg), ``EGP`` and ``Uid``
#: in mg/kg/min (Dalla Man et al. 2007), ``Ra = f kabs qgut / BW``; minimal PBPK
#: concentrations are amounts (mg) over organ volumes (L).
OUTPUT_UNITS: dict[str, dict[str, str]] = {
    "Compartmental": {"C": "mg/L"},
    "UvaPadova": {
        "G": "mg/dL",
        "Gsub": "mg/dL",
        "I": "pmol/L",
        "EGP": "mg/kg/min",
        "Ra": "mg/kg/min",
        "Uid": "mg/kg/min",
    },
    "MinimalPBPK": {
        "C": "mg/L",
        "C_blood": "mg/L",
        "C_liver": "mg/L",
        "C_kidney": "mg/L",
        "C_gut": "mg/L",
        "C_rest": "mg/L",
        "E_h": "1",
        "Q_h": "L/h",
    },
    "IndirectResponse": {"change": "response"},
}

#: The unit of binary endpoints' rates (and of their differences: percentage points)
PERCENT_PATIENTS = "% of patients"
POINTS = "percentage points"


def output_unit(model, output: str | None) -> str | None:
    """The unit of a model output or state (``None`` when the model does not say)."""
    if output is None:
        return None
    declared = model.output_units  # e.g. per-beat metrics (QuasiStaticTwin)
    if output in declared:
        return str(declared[output])
    subs = dict(getattr(model, "models", ()) or ())
    if "." in output and subs:
        head, rest = output.split(".", 1)
        if head in subs:
            return output_unit(subs[head], rest)
    try:
        return model.state(output).unit
    except (KeyError, AttributeError):
        pass
    return OUTPUT_UNITS.get(type(model).__name__, {}).get(output)


def endpoint_unit(trial, e) -> str | None:
    """The unit of an endpoint's values: the output's for values, changes, extremes;
    ``%`` for percent changes; the time unit for ``tmax``; output x time for ``auc``;
    ``fraction of time`` for ``time_in_range``; :data:`PERCENT_PATIENTS` for binary
    endpoints (their rates are shown in %); None when unknown."""
    if e.binary:
        return PERCENT_PATIENTS
    tu = getattr(trial.model, "time_unit", None)
    if e.kind == "tmax":
        return tu
    if e.kind == "time_in_range":
        return "fraction of time"
    if e.kind == "change" and e.percent:
        return "%"
    u = output_unit(trial.model, e.output)
    if e.kind == "auc":
        return None if u is None or tu is None else f"{u}·{tu}"
    return u


def difference_unit(trial, e) -> str:
    """The unit of ``arm - control`` for an endpoint (a forest plot's family)."""
    if e.binary:
        return POINTS
    u = endpoint_unit(trial, e)
    if u == "%":
        return "% (percent change)"
    return u or "unit not declared"


# ------------------------------------------------------------------------ formatting
def fmt(v, sig: int = 3) -> str:
    """A number for a table: ``sig`` significant digits without exponent (every integer
    digit kept); an empty string for NaN/None/inf."""
    if v is None:
        return ""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(v):
        return ""
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    if mag < -5:
        return f"{v:.{sig - 1}e}"
    dec = max(0, sig - 1 - mag)
    return f"{v:.{dec}f}"


def _g(v) -> str:
    """A value from the specification as written (``18``, ``0.002``, ``12.5``)."""
    return f"{float(v):g}"


def _u(unit: str | None) -> str:
    return "" if unit in (None, "", "1") else f" {unit}"


def _ci(lo, hi, scale: float = 1.0) -> str:
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return f"[{fmt(scale * lo)}, {fmt(scale * hi)}]"


def _p(v) -> str:
    return "" if v is None or not np.isfinite(v) else format_p(v)


def _level(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


def _esc(x) -> str:
    return html.escape(str(x))


def _table(header: list[str], rows: list[list[str]], cls: str = "t") -> str:
    """An HTML table of already formatted strings (escaped here)."""
    if not rows:
        return "<p><em>none</em></p>"
    th = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(fig, alt: str, cls: str, unit: str | None = None) -> str:
    extra = "" if unit is None else f" data-unit='{_esc(unit)}'"
    return (
        f"<figure class='{cls}'{extra}><img alt='{_esc(alt)}' "
        f"src='data:image/png;base64,{_png(fig)}'/><figcaption>{_esc(alt)}</figcaption></figure>"
    )


def _colours(arms: list[str]) -> dict[str, str]:
    """One colour per arm, the same in every figure (tab10, then tab20)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(arms) <= 10 else "tab20"]
    return {a: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, a in enumerate(arms)}


# ------------------------------------------------------------------------ figures
def _legend_outside(fig, leg, inches: float) -> None:
    """Lay the axes out in all but the right ``inches`` of the figure, which the legend
    (placed right of the axes) occupies: the legend never covers data."""
    leg.set_in_layout(False)
    fig.tight_layout(rect=(0.0, 0.0, 1.0 - inches / fig.get_figwidth(), 1.0))
    leg.set_in_layout(True)  # and the saved image's tight box includes it


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
    col = _colours(arms)
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
    _legend_outside(fig, leg, 1.6)
    return fig


def figure_endpoint(result, e):
    """The distribution of one endpoint per arm: box (quartiles) with 5-95 % whiskers and
    the mean for a continuous endpoint; the event rate (%) with its interval for a
    binary one."""
    import matplotlib.pyplot as plt

    tr = result.trial
    arms = [a.name for a in tr.arms]
    col = _colours(arms)
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
        ax.set_ylabel(f"patients with event (%), {_level(tr.alpha)} CI")
        ax.set_ylim(0, max(5.0, float(np.nanmax(np.r_[hi, rate, 0.0])) * 1.18))
    else:
        ok = _analysed(result, e)
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
    col = _colours(arms)
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
    ax.set_xlabel(f"difference vs {tr.control} ({unit}), {_level(tr.alpha)} CI")
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
    col = _colours([a.name for a in tr.arms])
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
    _legend_outside(fig, leg, 2.0)
    return fig


# ------------------------------------------------------------------------ sections
def _analysed(result, e) -> pd.DataFrame:
    """The analysis population of an endpoint (as in the statistics)."""
    t = result.table[result.table["status"] == 0]
    var = result.trial.variability
    if var is not None and var.dropout is not None and var.dropout.analysis == "completers":
        t = t[~t["dropped"].to_numpy(bool)]
    return t


def _describe(trial, e) -> str:
    tu = getattr(trial.model, "time_unit", None) or ""
    at = lambda t: f"{_g(t)} {tu}".strip()  # noqa: E731
    win = f" over [{at(e.window[0])}, {at(e.window[1])}]" if e.window else " over the trial"
    rel = "below" if e.direction == "below" else "above"
    pct = " (percent)" if e.percent else ""
    ou = _u(output_unit(trial.model, e.output))
    k = e.kind
    if k == "value":
        return f"{e.output} at {at(e.time)}"
    if k == "change":
        return f"change{pct} in {e.output} from {at(e.baseline_time)} to {at(e.time)}"
    if k == "responder":
        thr = f"{_g(e.threshold)}{' %' if e.percent else ou}"
        return (
            f"responder: change{pct} in {e.output} from {at(e.baseline_time)} to "
            f"{at(e.time)} {'at most' if e.direction == 'below' else 'at least'} {thr}"
        )
    if k == "safety":
        return f"event: {e.output} {rel} {_g(e.threshold)}{ou} at any saved time{win}"
    if k in ("cmax", "ctrough", "tmax", "auc"):
        what = {"cmax": "maximum", "ctrough": "minimum", "tmax": "time of maximum", "auc": "AUC"}
        return f"{what[k]} of {e.output}{win}"
    if k == "time_in_range":
        return f"fraction of time with {_g(e.low)} <= {e.output} <= {_g(e.high)}{ou}{win}"
    return "custom endpoint"


def _model_name(model) -> str:
    subs = getattr(model, "models", None)
    name = type(model).__name__
    if subs:
        name += " (" + ", ".join(f"{k}: {type(m).__name__}" for k, m in subs) + ")"
    return name


def _design(result) -> str:
    tr = result.trial
    tu = getattr(tr.model, "time_unit", None) or ""
    rows = []
    for a in tr.arms:
        n = a.n or tr.n_per_arm
        if a.regimen is None:
            reg = "placebo (no drug)"
        else:
            parts = []
            for d in a.regimen.doses:
                if not hasattr(d, "amt"):
                    continue
                du = _u(output_unit(tr.model, d.cmt))
                s = f"{_g(d.amt)}{du} into {d.cmt} at {_g(d.time)} {tu}"
                if d.addl:
                    s += f", then every {_g(d.ii)} {tu} ({d.addl + 1} doses)"
                if d.rate == -1:
                    s += ", infused at the modelled rate (RATE -1)"
                elif d.rate == -2:
                    s += ", infused over the modelled duration (RATE -2)"
                elif d.rate:
                    s += f", infused at {_g(d.rate)}{du}/{tu}"
                elif getattr(d, "dur", 0):
                    s += f", infused over {_g(d.dur)} {tu}"
                if getattr(d, "ss", 0):
                    s += f", at steady state (SS {d.ss})"
                parts.append(s)
            reg = "; ".join(parts) + (" (placebo arm)" if a.placebo else "")
        if a.params:
            reg += "; fixed " + ", ".join(f"{k} = {_g(v)}" for k, v in a.params.items())
        label = a.name + (" (control)" if a.name == tr.control else "")
        rows.append([label, f"{n:,} patients", reg])
    out = [
        "<h2 id='design'>Design</h2>",
        f"<p>Parallel-group virtual trial, {len(tr.arms)} arms randomised, "
        f"{tr.n_patients:,} patients; duration {_g(tr.duration)} {tu}, outputs saved every "
        f"{_g(tr.save_every)} {tu}"
        + (
            f" and at the beat times {', '.join(_g(t) for t in tr.beat_times)} {tu}"
            if tr.beat_times
            else ""
        )
        + f". Model: {_esc(_model_name(tr.model))}; seed {tr.seed}.</p>",
        _table(["arm", "n", "regimen"], rows),
    ]
    inc = []
    for c in tr.inclusion:
        what = c.covariate if c.covariate is not None else f"{c.output} at time 0"
        u = "" if c.covariate is not None else _u(output_unit(tr.model, c.output))
        lo = f"{_g(c.min)} <= " if np.isfinite(c.min) else ""
        hi = f" <= {_g(c.max)}{u}" if np.isfinite(c.max) else ""
        inc.append(f"{lo}{what}{hi}")
    out.append(
        "<p><b>Inclusion:</b> "
        + (_esc("; ".join(inc)) if inc else "every sampled virtual patient")
        + ".</p>"
    )
    out.append("<p><b>Sources of variability:</b></p><ul>")
    out.append("<li>between patients: the population's inter-individual variability</li>")
    v = tr.variability
    if v is None:
        out.append(
            "<li>none other: the twins are deterministic (no measurement error, placebo "
            "response, dropout or missed doses)</li>"
        )
    else:
        for me in v.errors:
            u = _u(output_unit(tr.model, me.output))
            bits = ([f"SD {_g(me.sd)}{u}"] if me.sd else []) + (
                [f"CV {_g(100 * me.cv)} %"] if me.cv else []
            )
            out.append(f"<li>measurement error on {_esc(me.output)}: {_esc(', '.join(bits))}</li>")
        for pr in v.placebo:
            u = _u(output_unit(tr.model, pr.output))
            out.append(
                f"<li>placebo response on {_esc(pr.output)} (every arm): up to "
                f"{_esc(_g(pr.emax))}{_esc(u)}, half at {_esc(_g(pr.t50))} {tu}, "
                f"between-patient SD {_esc(_g(pr.sd))}{_esc(u)}"
                + (
                    f"; progression {_esc(_g(pr.slope))}{_esc(u)}/{tu}"
                    if pr.slope or pr.slope_sd
                    else ""
                )
                + "</li>"
            )
        if v.dropout is not None:
            dr = v.dropout
            s = f"dropout: hazard {_g(dr.hazard)} per {tu}"
            if dr.outcome_output is not None:
                u = _u(output_unit(tr.model, dr.outcome_output))
                s += (
                    f", plus {_g(dr.outcome_hazard)} per {tu} while {dr.outcome_output} is "
                    f"{dr.direction} {_g(dr.threshold)}{u}"
                )
            s += f"; analysis population: {dr.analysis}"
            out.append(f"<li>{_esc(s)}</li>")
        if v.adherence is not None:
            out.append(f"<li>adherence: each dose taken with probability {_g(v.adherence)}</li>")
        for o in v.iov:
            occ = ", ".join(_g(t) for t in o.occasions)
            out.append(
                f"<li>inter-occasion variability of {_esc(o.param)}: SD {_esc(_g(o.kappa_sd))} "
                f"(in its transformed coordinate) per patient and occasion; occasions start "
                f"at {_esc(occ)} {tu}</li>"
            )
    out.append("</ul>")
    k = len(tr.arms) - 1
    out.append(
        f"<p><b>Statistics:</b> each arm vs {_esc(tr.control)}, two-sided alpha "
        f"{tr.alpha:g}, {_level(tr.alpha)} confidence intervals; Holm adjustment over the "
        f"{k} comparison{'s' if k != 1 else ''} of each endpoint (methods at the end). "
        f"Primary endpoint: <b>{_esc(tr.endpoints[0].name)}</b> (the first endpoint).</p>"
    )
    sa = tr.sensitivity
    if sa is not None:
        what = (["local sensitivities"] if sa.local else []) + (
            [f"Sobol' indices over {', '.join(sa.sobol)}"] if sa.sobol is not None else []
        )
        out.append(
            f"<p><b>Sensitivity analysis:</b> {_esc(' and '.join(what))} of "
            f"{_esc(sa.endpoint)} in {_esc(sa.arm)} "
            "(<a href='#sensitivity'>Sensitivity</a>).</p>"
        )
    return "\n".join(out)


def _warnings(result) -> str:
    w = result.warnings
    if not w:
        return ""
    items = "".join(f"<li>{_esc(x)}</li>" for x in w)
    return f"<div class='warn' id='warnings'><b>Sample-size warnings</b><ul>{items}</ul></div>"


ANALYSIS = {
    "completers": "Completers analysis: patients who dropped out are left out of every endpoint",
    "locf": "Last observation carried forward (LOCF): a patient who dropped out keeps the "
    "value of the last visit before the dropout (endpoints over a window after the dropout "
    "are missing)",
}


def _patients(result) -> str:
    p = result.patients
    rows = [
        [
            r.arm,
            f"{r.simulated}",
            f"{r.failed}",
            f"{r.dropped_out}",
            f"{r.analysed_primary}",
        ]
        for r in p.itertuples()
    ]
    tot = p[["simulated", "failed", "dropped_out", "analysed_primary"]].sum()
    rows.append(["total", *(f"{int(v)}" for v in tot)])
    var = result.trial.variability
    analysis = "No dropout was simulated. "
    if var is not None and var.dropout is not None:
        analysis = ANALYSIS.get(var.dropout.analysis, var.dropout.analysis) + ". "
    return (
        "<h2 id='patients'>Patients</h2>"
        + _table(
            [
                "arm",
                "simulated (patients)",
                "failed simulations (excluded)",
                "dropped out (patients)",
                "analysed, primary endpoint (patients)",
            ],
            rows,
        )
        + f"<p>{_esc(analysis)}Failed simulations are excluded from every analysis; "
        f"simulated in {result.seconds:.1f} s.</p>"
    )


def _estimate(result, e, arm) -> tuple[str, str, str]:
    """``(n, estimate with unit, interval)`` for one arm of an endpoint."""
    s = result.summary
    r = s[(s["endpoint"] == e.name) & (s["arm"] == arm)]
    if not len(r):
        return "", "", ""
    r = r.iloc[0]
    n = "" if not np.isfinite(r.get("n", np.nan)) else f"{int(r['n'])}"
    if e.binary:
        if not r["n"]:
            return n, "", ""
        est = f"{int(r['events'])}/{int(r['n'])} ({fmt(100 * r['rate'])} %)"
        return n, est, _ci(r["ci_low"], r["ci_high"], 100.0) + " %"
    u = _u(endpoint_unit(result.trial, e))
    if "mean" not in r or not np.isfinite(r["mean"]):
        return n, "", ""
    sd = f" (SD {fmt(r['sd'])})" if np.isfinite(r.get("sd", np.nan)) else ""
    return n, f"{fmt(r['mean'])}{u}{sd}", ""


def _has_ancova(result, e) -> bool:
    c = result.comparisons
    if not len(c) or "ancova_diff" not in c:
        return False
    return bool(np.isfinite(c.loc[c["endpoint"] == e.name, "ancova_diff"].to_numpy(float)).any())


def _comparison_rows(result, e) -> list[list[str]]:
    tr = result.trial
    c = result.comparisons
    if not len(c):
        return []
    c = c[c["endpoint"] == e.name]
    scale = 100.0 if e.binary else 1.0
    u = POINTS if e.binary else (endpoint_unit(tr, e) or "")
    rows = []
    for r in c.itertuples():
        row = [
            f"{r.arm} - {tr.control}",
            f"{fmt(scale * r.diff)} {u}".strip() if np.isfinite(r.diff) else "",
            _ci(r.ci_low, r.ci_high, scale),
            _p(r.p_value),
            _p(getattr(r, "p_adjusted", np.nan)),
        ]
        if _has_ancova(result, e):
            row += [
                f"{fmt(r.ancova_diff)} {u}".strip() if np.isfinite(r.ancova_diff) else "",
                _ci(r.ancova_ci_low, r.ancova_ci_high),
                _p(r.ancova_p),
                _p(getattr(r, "ancova_p_adjusted", np.nan)),
            ]
        rows.append(row)
    return rows


def _comparison_header(result, e) -> list[str]:
    lvl = _level(result.trial.alpha)
    u = POINTS if e.binary else (endpoint_unit(result.trial, e) or "unit not declared")
    h = [
        "comparison",
        f"difference ({u})",
        f"{lvl} CI ({u})",
        "p",
        "p (Holm)",
    ]
    if _has_ancova(result, e):
        h += [f"ANCOVA difference ({u})", f"ANCOVA {lvl} CI ({u})", "ANCOVA p", "ANCOVA p (Holm)"]
    return h


def _summary_rows(result, e) -> tuple[list[str], list[list[str]]]:
    tr = result.trial
    arms = [a.name for a in tr.arms]
    unit = endpoint_unit(tr, e)
    s = result.summary
    s = s[s["endpoint"] == e.name].set_index("arm")
    lvl = _level(tr.alpha)
    if e.binary:
        head = ["arm", "n (patients)", "events / n (%)", f"{lvl} CI (%)", "interval method"]
        rows = []
        for a in arms:
            n, est, ci = _estimate(result, e, a)
            rows.append([a, n, est, ci.replace(" %", ""), str(s.loc[a].get("ci_method", ""))])
        return head, rows
    un = f" ({unit})" if unit else " (unit not declared)"
    head = ["arm", "n (patients)", f"mean{un}", f"SD{un}", f"median{un}", f"5-95 % range{un}"]
    rows = []
    for a in arms:
        r = s.loc[a] if a in s.index else pd.Series(dtype=float)
        g = lambda k: r[k] if k in r else np.nan  # noqa: E731
        rows.append(
            [
                a,
                "" if not np.isfinite(g("n")) else f"{int(g('n'))}",
                fmt(g("mean")),
                fmt(g("sd")),
                fmt(g("median")),
                _ci(g("q05"), g("q95")),
            ]
        )
    return head, rows


def _primary(result) -> str:
    tr = result.trial
    e = tr.endpoints[0]
    unit = endpoint_unit(tr, e)
    lvl = _level(tr.alpha)
    rows = []
    for a in tr.arms:
        n, est, ci = _estimate(result, e, a.name)
        rows.append([a.name, n, est] + ([ci] if e.binary else []))
    head = ["arm", "n (patients)", "events / n (%)" if e.binary else f"mean ({unit}) (SD)"]
    if e.binary:
        head.append(f"{lvl} CI")
    return (
        f"<h2 id='primary'>Primary endpoint: {_esc(e.name)}</h2>"
        f"<p>{_esc(_describe(tr, e))}; unit: {_esc(unit or 'not declared')}.</p>"
        + _table(head, rows, "t primary")
        + f"<p>Difference with {_esc(tr.control)}:</p>"
        + _table(_comparison_header(result, e), _comparison_rows(result, e), "t primary")
    )


def _endpoint_section(result, e, i: int) -> str:
    tr = result.trial
    unit = endpoint_unit(tr, e)
    head, rows = _summary_rows(result, e)
    parts = [
        f"<h3 id='endpoint-{i}'>{_esc(e.name)}{' (primary)' if i == 0 else ''}</h3>",
        f"<p>{_esc(_describe(tr, e))}; unit: {_esc(unit or 'not declared')}; "
        f"{'binary (event rate)' if e.binary else 'continuous'}.</p>",
        _table(head, rows),
        _table(_comparison_header(result, e), _comparison_rows(result, e)),
        "<div class='row'>",
        _img(figure_endpoint(result, e), f"Distribution of {e.name} per arm", "dist"),
    ]
    fp = figure_power(result, e.name)
    if fp is not None:
        parts.append(_img(fp, f"Power for {e.name} from replicate trials", "power"))
    parts.append("</div>")
    return "\n".join(parts)


def _forests(result) -> str:
    tr = result.trial
    fams = list(dict.fromkeys(difference_unit(tr, e) for e in tr.endpoints))
    parts = [
        "<h2 id='forest'>Effects vs control, one plot per unit</h2>",
        "<p>Differences of unlike units are never drawn on one axis.</p>",
    ]
    for u in fams:
        fig = figure_forest(result, u)
        if fig is not None:
            parts.append(_img(fig, f"Differences vs {tr.control} in {u}", "forest", unit=u))
    return "\n".join(parts)


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
        _legend_outside(fig, leg, 1.6)
    return fig


def _sensitivity(result) -> str:
    """The sensitivity section: what was analysed, tornado and Sobol' figures, tables."""
    s, r = result.trial.sensitivity, result.sensitivity
    if s is None or not r:
        return ""
    tr = result.trial
    e = next(x for x in tr.endpoints if x.name == s.endpoint)
    unit = endpoint_unit(tr, e)
    parts = [
        "<h2 id='sensitivity'>Sensitivity</h2>",
        f"<p>Which parameters drive <b>{_esc(e.name)}</b> ({_esc(_describe(tr, e))}; "
        f"{_esc(unit or 'unit not declared')}) in arm <b>{_esc(s.arm)}</b>: the twin's "
        "endpoint under the arm's regimen as prescribed, without measurement error, placebo "
        "response, dropout or missed doses.</p>",
    ]
    parts += [f"<div class='warn'>{_esc(n)}</div>" for n in r.get("notes", [])]
    loc, summ = r.get("local"), r.get("local_summary")
    if loc is not None:
        failed = int((loc.status != 0).sum())
        parts.append(
            "<h3 id='sensitivity-local'>Local sensitivities</h3>"
            f"<p>Normalised sensitivities d log {_esc(e.name)} / d log parameter (the % "
            "change of the endpoint for a 1 % change of the parameter) by forward-mode "
            f"automatic differentiation, for each of {loc.n_patients} patients of "
            f"{_esc(s.arm)} at their own parameter values"
            + (f" ({failed} failed simulations left out)" if failed else "")
            + "; median, interquartile range and 5-95 % over the patients, largest "
            "|median| first.</p>"
        )
        if summ is not None:
            rows = [
                [
                    str(k),
                    fmt(row["median"]),
                    _ci(row["q25"], row["q75"]),
                    _ci(row["q05"], row["q95"]),
                ]
                for k, row in summ.iterrows()
            ]
            fig = figure_tornado(result)
            parts += [
                "<div class='row'>",
                _table(["parameter", "median", "IQR (25-75 %)", "5-95 %"], rows, "t sens"),
                _img(fig, f"Local sensitivities of {e.name} (tornado)", "tornado"),
                "</div>",
            ]
    sob = r.get("sobol")
    if sob is not None:
        fixed = r.get("typical", {})
        pct = f"{100 * sob.confidence:g} %"
        parts.append(
            "<h3 id='sensitivity-sobol'>Global sensitivity (Sobol' indices)</h3>"
            f"<p>First-order (S1) and total (ST) Sobol' indices of {_esc(e.name)} for the "
            f"typical patient of {_esc(s.arm)} with "
            + ", ".join(
                f"{_esc(k)} uniform on [{_g(lo)}, {_g(hi)}]" for k, (lo, hi) in sob.bounds.items()
            )
            + f"; the other {len(fixed)} parameters at their typical values (summary.json). "
            f"Saltelli design, N = {sob.n} base samples, {sob.samples.shape[0]} runs in one "
            f"batched cohort, seed {sob.seed}; {pct} bootstrap intervals "
            f"({sob.n_bootstrap} resamples)"
            + (
                f"; {sob.n_dropped} base samples with a failed run left out"
                if sob.n_dropped
                else ""
            )
            + ". S1: share of the variance explained by the parameter alone; ST: including "
            "its interactions.</p>"
        )
        rows = [
            [
                k,
                f"[{_g(sob.bounds[k][0])}, {_g(sob.bounds[k][1])}]",
                fmt(sob.S1[j]),
                _ci(*sob.S1_ci[j]),
                fmt(sob.ST[j]),
                _ci(*sob.ST_ci[j]),
            ]
            for j, k in enumerate(sob.parameters)
        ]
        head = ["parameter", "range", "S1", f"S1 {pct} CI", "ST", f"ST {pct} CI"]
        parts += [
            "<div class='row'>",
            _table(head, rows, "t sens"),
            _img(figure_sobol(result), f"Sobol' indices of {e.name}", "sobol"),
            "</div>",
        ]
    return "\n".join(parts)


def _subgroups(result) -> str:
    sg = result.subgroups
    if not len(sg):
        return ""
    tr = result.trial
    eps = {e.name: e for e in tr.endpoints}
    lvl = _level(tr.alpha)
    parts = [
        "<details id='subgroups'><summary><b>Subgroups</b> (exploratory, no multiplicity "
        f"adjustment; {len(sg)} comparisons)</summary>"
    ]
    for name, g in sg.groupby("endpoint", sort=False):
        e = eps[name]
        scale = 100.0 if e.binary else 1.0
        u = POINTS if e.binary else (endpoint_unit(tr, e) or "unit not declared")
        rows = [
            [
                r.subgroup,
                f"{r.arm} - {tr.control}",
                f"{r.n_arm} / {r.n_control}",
                fmt(scale * r.diff),
                _ci(r.ci_low, r.ci_high, scale),
                _p(r.p_value),
            ]
            for r in g.itertuples()
        ]
        parts.append(f"<h4>{_esc(name)}</h4>")
        parts.append(
            _table(
                [
                    "subgroup",
                    "comparison",
                    "n arm / control (patients)",
                    f"difference ({u})",
                    f"{lvl} CI ({u})",
                    "p",
                ],
                rows,
            )
        )
    parts.append("</details>")
    return "\n".join(parts)


def _power_tables(result) -> str:
    pw = result.power
    if not len(pw):
        return ""
    tr = result.trial
    rows = [
        [
            r.endpoint,
            f"{r.arm} vs {tr.control}",
            f"{r.n_per_arm}",
            f"{fmt(100 * r.power)} %",
            f"{fmt(100 * r.mc_se, 2)} %",
            f"{r.replicates}",
        ]
        for r in pw.itertuples()
    ]
    return (
        "<details id='power'><summary><b>Power tables</b> (replicate trials)</summary>"
        f"<p>Fraction of {tr.replicates} replicate trials per size with p &lt; {tr.alpha:g} "
        "(unadjusted; patients drawn without replacement from the simulated arms), with its "
        "Monte Carlo standard error sqrt(power (1 - power) / replicates).</p>"
        + _table(
            [
                "endpoint",
                "comparison",
                "patients per arm",
                "power (%)",
                "Monte Carlo SE (%)",
                "replicates",
            ],
            rows,
        )
        + "</details>"
    )


def _methods(result) -> str:
    """What the comparison tables report: intervals, tests and the multiplicity adjustment."""
    tr = result.trial
    ctl = _esc(tr.control)
    level, k = _level(tr.alpha), len(tr.arms) - 1
    comp = result.comparisons
    adj = comp["adjustment"].iloc[0] if len(comp) and "adjustment" in comp else "no"
    return (
        "<h2 id='methods'>Methods</h2>"
        f"<p>Differences are arm minus {ctl} with {level} confidence intervals. "
        "Continuous endpoints: Welch's t-test and its interval; change-from-baseline endpoints "
        "also ANCOVA (OLS of the endpoint on arm and baseline). Binary endpoints: rates in % "
        "of patients, differences in percentage points; Newcombe's hybrid score interval "
        "(from Wilson intervals) with the p-value that inverts it, so "
        f"the {level} interval excludes 0 exactly when p &lt; {tr.alpha:g} (Fisher's exact p "
        "is in summary.json as p_fisher); per-arm rates have Wilson intervals, exact "
        "Clopper-Pearson ones when an arm has no events (or only events).</p>"
        f"<p>Multiplicity: {_esc(adj)} step-down adjustment of the p-values over "
        f"the {k} arm{'s' if k != 1 else ''} compared with {ctl}, within each endpoint "
        "(column 'p (Holm)'); intervals and subgroup analyses are not adjusted. "
        "p-values below 0.001 are shown as &lt; 0.001. Empty cells: not estimable (e.g. no "
        "patient, or a constant arm). Test statistics, degrees of freedom and unrounded "
        "values are in summary.json; per-patient values in endpoints.csv.</p>"
    )


CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "color:#222}h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;margin-top:1.6em}"
    "table.t{border-collapse:collapse;font-size:13px;margin:.5em 0}"
    "table.t td,table.t th{padding:3px 9px;border-bottom:1px solid #ddd;text-align:left}"
    "table.t th{background:#f4f4f4}table.t td+td{white-space:nowrap}table.primary{font-size:15px}"
    "img{max-width:100%;height:auto}figure{margin:.6em 0}"
    "figcaption{font-size:12px;color:#555}"
    ".warn{background:#fff4d6;border:1px solid #e0b000;padding:.4em 1em;margin:1em 0}"
    ".row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}"
    "details{margin:1em 0}summary{cursor:pointer}nav a{margin-right:1em}"
)


def write_report(result, path) -> pathlib.Path:
    """Write the HTML report of a :class:`TrialResult` to ``path`` (see the module).

    The figures are drawn with whatever matplotlib backend is active (the library never
    switches it: a notebook keeps its inline figures) and closed once embedded.
    """
    tr = result.trial
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{_esc(tr.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_esc(tr.name)}</h1>",
        "<nav><a href='#design'>Design</a><a href='#patients'>Patients</a>"
        "<a href='#primary'>Primary endpoint</a><a href='#endpoints'>Endpoints</a>"
        "<a href='#forest'>Forest plots</a><a href='#time'>Time courses</a>"
        + ("<a href='#sensitivity'>Sensitivity</a>" if result.sensitivity else "")
        + "<a href='#methods'>Methods</a></nav>",
        _design(result),
        _warnings(result),
        _patients(result),
        _primary(result),
        "<h2 id='endpoints'>Endpoints</h2>",
    ]
    parts += [_endpoint_section(result, e, i) for i, e in enumerate(tr.endpoints)]
    parts.append(_forests(result))
    parts.append(
        "<h2 id='time'>Time courses</h2>"
        + _img(figure_bands(result), "Median and 5-95 % of the simulated outputs", "bands")
    )
    parts += [
        _sensitivity(result),
        _subgroups(result),
        _power_tables(result),
        _methods(result),
        "</body></html>",
    ]
    path = pathlib.Path(path)
    path.write_text("\n".join(p for p in parts if p))
    return path
