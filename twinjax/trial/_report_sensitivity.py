"""The trial report's sensitivity section: local sensitivities (tornado and table)
and Sobol' indices with their bootstrap intervals."""

from __future__ import annotations

from ._report_design import describe_endpoint
from ._report_figures import figure_sobol, figure_tornado
from ._report_format import as_written, endpoint_unit, esc, figure_html, fmt, html_table, interval


def sensitivity_section(result) -> str:
    """The sensitivity section: what was analysed, tornado and Sobol' figures, tables."""
    s, r = result.trial.sensitivity, result.sensitivity
    if s is None or not r:
        return ""
    tr = result.trial
    e = next(x for x in tr.endpoints if x.name == s.endpoint)
    unit = endpoint_unit(tr, e)
    parts = [
        "<h2 id='sensitivity'>Sensitivity</h2>",
        f"<p>Which parameters drive <b>{esc(e.name)}</b> ({esc(describe_endpoint(tr, e))}; "
        f"{esc(unit or 'unit not declared')}) in arm <b>{esc(s.arm)}</b>: the twin's "
        "endpoint under the arm's regimen as prescribed, without measurement error, placebo "
        "response, dropout or missed doses.</p>",
    ]
    parts += [f"<div class='warn'>{esc(n)}</div>" for n in r.get("notes", [])]
    loc, summ = r.get("local"), r.get("local_summary")
    if loc is not None:
        failed = int((loc.status != 0).sum())
        parts.append(
            "<h3 id='sensitivity-local'>Local sensitivities</h3>"
            f"<p>Normalised sensitivities d log {esc(e.name)} / d log parameter (the % "
            "change of the endpoint for a 1 % change of the parameter) by forward-mode "
            f"automatic differentiation, for each of {loc.n_patients} patients of "
            f"{esc(s.arm)} at their own parameter values"
            + (f" ({failed} failed simulations left out)" if failed else "")
            + "; median, interquartile range and 5-95 % over the patients, largest "
            "|median| first.</p>"
        )
        if summ is not None:
            rows = [
                [
                    str(k),
                    fmt(row["median"]),
                    interval(row["q25"], row["q75"]),
                    interval(row["q05"], row["q95"]),
                ]
                for k, row in summ.iterrows()
            ]
            fig = figure_tornado(result)
            parts += [
                "<div class='row'>",
                html_table(["parameter", "median", "IQR (25-75 %)", "5-95 %"], rows, "t sens"),
                figure_html(fig, f"Local sensitivities of {e.name} (tornado)", "tornado"),
                "</div>",
            ]
    sob = r.get("sobol")
    if sob is not None:
        fixed = r.get("typical", {})
        pct = f"{100 * sob.confidence:g} %"
        parts.append(
            "<h3 id='sensitivity-sobol'>Global sensitivity (Sobol' indices)</h3>"
            f"<p>First-order (S1) and total (ST) Sobol' indices of {esc(e.name)} for the "
            f"typical patient of {esc(s.arm)} with "
            + ", ".join(
                f"{esc(k)} uniform on [{as_written(lo)}, {as_written(hi)}]"
                for k, (lo, hi) in sob.bounds.items()
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
                f"[{as_written(sob.bounds[k][0])}, {as_written(sob.bounds[k][1])}]",
                fmt(sob.S1[j]),
                interval(*sob.S1_ci[j]),
                fmt(sob.ST[j]),
                interval(*sob.ST_ci[j]),
            ]
            for j, k in enumerate(sob.parameters)
        ]
        head = ["parameter", "range", "S1", f"S1 {pct} CI", "ST", f"ST {pct} CI"]
        parts += [
            "<div class='row'>",
            html_table(head, rows, "t sens"),
            figure_html(figure_sobol(result), f"Sobol' indices of {e.name}", "sobol"),
            "</div>",
        ]
    return "\n".join(parts)
