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

Layout: units, number formatting and the HTML helpers are in ``_report_format.py``, the
figures in ``_report_figures.py``, the design and the endpoints' definitions in words in
``_report_design.py``, the sensitivity section in ``_report_sensitivity.py``; this
module writes the result sections and assembles the page (:func:`write_report`), and
re-exports the public names of the others.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

from ._report_design import describe_endpoint, design_section
from ._report_figures import figure_bands as figure_bands
from ._report_figures import figure_endpoint as figure_endpoint
from ._report_figures import figure_forest as figure_forest
from ._report_figures import figure_power as figure_power
from ._report_figures import figure_sobol as figure_sobol
from ._report_figures import figure_tornado as figure_tornado
from ._report_format import OUTPUT_UNITS as OUTPUT_UNITS
from ._report_format import PERCENT_PATIENTS as PERCENT_PATIENTS
from ._report_format import POINTS as POINTS
from ._report_format import (
    ci_level,
    esc,
    figure_html,
    fmt,
    html_table,
    interval,
    p_text,
    unit_suffix,
)
from ._report_format import difference_unit as difference_unit
from ._report_format import endpoint_unit as endpoint_unit
from ._report_format import output_unit as output_unit
from ._report_sensitivity import sensitivity_section


def _warnings(result) -> str:
    w = result.warnings
    if not w:
        return ""
    items = "".join(f"<li>{esc(x)}</li>" for x in w)
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
        + html_table(
            [
                "arm",
                "simulated (patients)",
                "failed simulations (excluded)",
                "dropped out (patients)",
                "analysed, primary endpoint (patients)",
            ],
            rows,
        )
        + f"<p>{esc(analysis)}Failed simulations are excluded from every analysis; "
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
        return n, est, interval(r["ci_low"], r["ci_high"], 100.0) + " %"
    u = unit_suffix(endpoint_unit(result.trial, e))
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
            interval(r.ci_low, r.ci_high, scale),
            p_text(r.p_value),
            p_text(getattr(r, "p_adjusted", np.nan)),
        ]
        if _has_ancova(result, e):
            row += [
                f"{fmt(r.ancova_diff)} {u}".strip() if np.isfinite(r.ancova_diff) else "",
                interval(r.ancova_ci_low, r.ancova_ci_high),
                p_text(r.ancova_p),
                p_text(getattr(r, "ancova_p_adjusted", np.nan)),
            ]
        rows.append(row)
    return rows


def _comparison_header(result, e) -> list[str]:
    lvl = ci_level(result.trial.alpha)
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
    lvl = ci_level(tr.alpha)
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
                interval(g("q05"), g("q95")),
            ]
        )
    return head, rows


def _primary(result) -> str:
    tr = result.trial
    e = tr.endpoints[0]
    unit = endpoint_unit(tr, e)
    lvl = ci_level(tr.alpha)
    rows = []
    for a in tr.arms:
        n, est, ci = _estimate(result, e, a.name)
        rows.append([a.name, n, est] + ([ci] if e.binary else []))
    head = ["arm", "n (patients)", "events / n (%)" if e.binary else f"mean ({unit}) (SD)"]
    if e.binary:
        head.append(f"{lvl} CI")
    return (
        f"<h2 id='primary'>Primary endpoint: {esc(e.name)}</h2>"
        f"<p>{esc(describe_endpoint(tr, e))}; unit: {esc(unit or 'not declared')}.</p>"
        + html_table(head, rows, "t primary")
        + f"<p>Difference with {esc(tr.control)}:</p>"
        + html_table(_comparison_header(result, e), _comparison_rows(result, e), "t primary")
    )


def _endpoint_section(result, e, i: int) -> str:
    tr = result.trial
    unit = endpoint_unit(tr, e)
    head, rows = _summary_rows(result, e)
    parts = [
        f"<h3 id='endpoint-{i}'>{esc(e.name)}{' (primary)' if i == 0 else ''}</h3>",
        f"<p>{esc(describe_endpoint(tr, e))}; unit: {esc(unit or 'not declared')}; "
        f"{'binary (event rate)' if e.binary else 'continuous'}.</p>",
        html_table(head, rows),
        html_table(_comparison_header(result, e), _comparison_rows(result, e)),
        "<div class='row'>",
        figure_html(figure_endpoint(result, e), f"Distribution of {e.name} per arm", "dist"),
    ]
    fp = figure_power(result, e.name)
    if fp is not None:
        parts.append(figure_html(fp, f"Power for {e.name} from replicate trials", "power"))
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
            parts.append(figure_html(fig, f"Differences vs {tr.control} in {u}", "forest", unit=u))
    return "\n".join(parts)


def _folded(anchor: str, summary: str, body: str) -> str:
    """A section folded away (``<details>``): ``summary`` (HTML) shows, ``body`` opens."""
    return f"<details id='{anchor}'><summary>{summary}</summary>{body}</details>"


def _subgroups(result) -> str:
    sg = result.subgroups
    if not len(sg):
        return ""
    tr = result.trial
    eps = {e.name: e for e in tr.endpoints}
    lvl = ci_level(tr.alpha)
    parts = []
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
                interval(r.ci_low, r.ci_high, scale),
                p_text(r.p_value),
            ]
            for r in g.itertuples()
        ]
        parts.append(f"<h4>{esc(name)}</h4>")
        parts.append(
            html_table(
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
    summary = f"<b>Subgroups</b> (exploratory, no multiplicity adjustment; {len(sg)} comparisons)"
    return _folded("subgroups", summary, "\n" + "\n".join(parts) + "\n")


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
    return _folded(
        "power",
        "<b>Power tables</b> (replicate trials)",
        f"<p>Fraction of {tr.replicates} replicate trials per size with p &lt; {tr.alpha:g} "
        "(unadjusted; patients drawn without replacement from the simulated arms), with its "
        "Monte Carlo standard error sqrt(power (1 - power) / replicates).</p>"
        + html_table(
            [
                "endpoint",
                "comparison",
                "patients per arm",
                "power (%)",
                "Monte Carlo SE (%)",
                "replicates",
            ],
            rows,
        ),
    )


def _methods(result) -> str:
    """What the comparison tables report: intervals, tests and the multiplicity adjustment."""
    tr = result.trial
    ctl = esc(tr.control)
    level, k = ci_level(tr.alpha), len(tr.arms) - 1
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
        f"<p>Multiplicity: {esc(adj)} step-down adjustment of the p-values over "
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
        f"<title>{esc(tr.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(tr.name)}</h1>",
        "<nav><a href='#design'>Design</a><a href='#patients'>Patients</a>"
        "<a href='#primary'>Primary endpoint</a><a href='#endpoints'>Endpoints</a>"
        "<a href='#forest'>Forest plots</a><a href='#time'>Time courses</a>"
        + ("<a href='#sensitivity'>Sensitivity</a>" if result.sensitivity else "")
        + "<a href='#methods'>Methods</a></nav>",
        design_section(result),
        _warnings(result),
        _patients(result),
        _primary(result),
        "<h2 id='endpoints'>Endpoints</h2>",
    ]
    parts += [_endpoint_section(result, e, i) for i, e in enumerate(tr.endpoints)]
    parts.append(_forests(result))
    parts.append(
        "<h2 id='time'>Time courses</h2>"
        + figure_html(figure_bands(result), "Median and 5-95 % of the simulated outputs", "bands")
    )
    parts += [
        sensitivity_section(result),
        _subgroups(result),
        _power_tables(result),
        _methods(result),
        "</body></html>",
    ]
    path = pathlib.Path(path)
    path.write_text("\n".join(p for p in parts if p))
    return path
