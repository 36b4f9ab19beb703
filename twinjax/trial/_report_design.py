"""The trial report's account of the design: arms and regimens, inclusion, the
sources of variability, the statistics, and each endpoint's definition in words."""

from __future__ import annotations

import numpy as np

from ._endpoint_kinds import (
    AUC,
    Change,
    Cmax,
    Ctrough,
    Custom,
    Responder,
    Safety,
    TimeInRange,
    Tmax,
    Value,
)
from ._report_format import as_written, ci_level, esc, html_table, output_unit, unit_suffix


def describe_endpoint(trial, e) -> str:
    tu = getattr(trial.model, "time_unit", None) or ""
    at = lambda t: f"{as_written(t)} {tu}".strip()  # noqa: E731
    win = f" over [{at(e.window[0])}, {at(e.window[1])}]" if e.window else " over the trial"
    rel = "below" if e.direction == "below" else "above"
    pct = " (percent)" if e.percent else ""
    ou = unit_suffix(output_unit(trial.model, e.output))
    k = e.kind
    if isinstance(k, Value):
        return f"{e.output} at {at(e.time)}"
    if isinstance(k, Change):
        return f"change{pct} in {e.output} from {at(e.baseline_time)} to {at(e.time)}"
    if isinstance(k, Responder):
        thr = f"{as_written(e.threshold)}{' %' if e.percent else ou}"
        return (
            f"responder: change{pct} in {e.output} from {at(e.baseline_time)} to "
            f"{at(e.time)} {'at most' if e.direction == 'below' else 'at least'} {thr}"
        )
    if isinstance(k, Safety):
        return f"event: {e.output} {rel} {as_written(e.threshold)}{ou} at any saved time{win}"
    what = {Cmax: "maximum", Ctrough: "minimum", Tmax: "time of maximum", AUC: "AUC"}
    if type(k) in what:
        return f"{what[type(k)]} of {e.output}{win}"
    if isinstance(k, TimeInRange):
        lo, hi = as_written(e.low), as_written(e.high)
        return f"fraction of time with {lo} <= {e.output} <= {hi}{ou}{win}"
    if isinstance(k, Custom):
        return "custom endpoint"
    return f"{k.name} of {e.output}{win}"  # a kind defined outside twinjax


def _model_name(model) -> str:
    subs = getattr(model, "models", None)
    name = type(model).__name__
    if subs:
        name += " (" + ", ".join(f"{k}: {type(m).__name__}" for k, m in subs) + ")"
    return name


def design_section(result) -> str:
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
                du = unit_suffix(output_unit(tr.model, d.cmt))
                s = f"{as_written(d.amt)}{du} into {d.cmt} at {as_written(d.time)} {tu}"
                if d.addl:
                    s += f", then every {as_written(d.ii)} {tu} ({d.addl + 1} doses)"
                if d.rate == -1:
                    s += ", infused at the modelled rate (RATE -1)"
                elif d.rate == -2:
                    s += ", infused over the modelled duration (RATE -2)"
                elif d.rate:
                    s += f", infused at {as_written(d.rate)}{du}/{tu}"
                elif getattr(d, "dur", 0):
                    s += f", infused over {as_written(d.dur)} {tu}"
                if getattr(d, "ss", 0):
                    s += f", at steady state (SS {d.ss})"
                parts.append(s)
            reg = "; ".join(parts) + (" (placebo arm)" if a.placebo else "")
        if a.params:
            reg += "; fixed " + ", ".join(f"{k} = {as_written(v)}" for k, v in a.params.items())
        label = a.name + (" (control)" if a.name == tr.control else "")
        rows.append([label, f"{n:,} patients", reg])
    out = [
        "<h2 id='design'>Design</h2>",
        f"<p>Parallel-group virtual trial, {len(tr.arms)} arms randomised, "
        f"{tr.n_patients:,} patients; duration {as_written(tr.duration)} {tu}, outputs saved every "
        f"{as_written(tr.save_every)} {tu}"
        + (
            f" and at the beat times {', '.join(as_written(t) for t in tr.beat_times)} {tu}"
            if tr.beat_times
            else ""
        )
        + f". Model: {esc(_model_name(tr.model))}; seed {tr.seed}.</p>",
        html_table(["arm", "n", "regimen"], rows),
    ]
    inc = []
    for c in tr.inclusion:
        what = c.covariate if c.covariate is not None else f"{c.output} at time 0"
        u = "" if c.covariate is not None else unit_suffix(output_unit(tr.model, c.output))
        lo = f"{as_written(c.min)} <= " if np.isfinite(c.min) else ""
        hi = f" <= {as_written(c.max)}{u}" if np.isfinite(c.max) else ""
        inc.append(f"{lo}{what}{hi}")
    out.append(
        "<p><b>Inclusion:</b> "
        + (esc("; ".join(inc)) if inc else "every sampled virtual patient")
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
            u = unit_suffix(output_unit(tr.model, me.output))
            bits = ([f"SD {as_written(me.sd)}{u}"] if me.sd else []) + (
                [f"CV {as_written(100 * me.cv)} %"] if me.cv else []
            )
            out.append(f"<li>measurement error on {esc(me.output)}: {esc(', '.join(bits))}</li>")
        for pr in v.placebo:
            u = unit_suffix(output_unit(tr.model, pr.output))
            out.append(
                f"<li>placebo response on {esc(pr.output)} (every arm): up to "
                f"{esc(as_written(pr.emax))}{esc(u)}, half at {esc(as_written(pr.t50))} {tu}, "
                f"between-patient SD {esc(as_written(pr.sd))}{esc(u)}"
                + (
                    f"; progression {esc(as_written(pr.slope))}{esc(u)}/{tu}"
                    if pr.slope or pr.slope_sd
                    else ""
                )
                + "</li>"
            )
        if v.dropout is not None:
            dr = v.dropout
            s = f"dropout: hazard {as_written(dr.hazard)} per {tu}"
            if dr.outcome_output is not None:
                u = unit_suffix(output_unit(tr.model, dr.outcome_output))
                s += (
                    f", plus {as_written(dr.outcome_hazard)} per {tu} while {dr.outcome_output} is "
                    f"{dr.direction} {as_written(dr.threshold)}{u}"
                )
            s += f"; analysis population: {dr.analysis}"
            out.append(f"<li>{esc(s)}</li>")
        if v.adherence is not None:
            out.append(
                f"<li>adherence: each dose taken with probability {as_written(v.adherence)}</li>"
            )
        for o in v.iov:
            occ = ", ".join(as_written(t) for t in o.occasions)
            out.append(
                f"<li>inter-occasion variability of {esc(o.param)}: "
                f"SD {esc(as_written(o.kappa_sd))} "
                f"(in its transformed coordinate) per patient and occasion; occasions start "
                f"at {esc(occ)} {tu}</li>"
            )
    out.append("</ul>")
    k = len(tr.arms) - 1
    out.append(
        f"<p><b>Statistics:</b> each arm vs {esc(tr.control)}, two-sided alpha "
        f"{tr.alpha:g}, {ci_level(tr.alpha)} confidence intervals; Holm adjustment over the "
        f"{k} comparison{'s' if k != 1 else ''} of each endpoint (methods at the end). "
        f"Primary endpoint: <b>{esc(tr.endpoints[0].name)}</b> (the first endpoint).</p>"
    )
    sa = tr.sensitivity
    if sa is not None:
        what = (["local sensitivities"] if sa.local else []) + (
            [f"Sobol' indices over {', '.join(sa.sobol)}"] if sa.sobol is not None else []
        )
        out.append(
            f"<p><b>Sensitivity analysis:</b> {esc(' and '.join(what))} of "
            f"{esc(sa.endpoint)} in {esc(sa.arm)} "
            "(<a href='#sensitivity'>Sensitivity</a>).</p>"
        )
    return "\n".join(out)
