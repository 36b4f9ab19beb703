"""Units and formatting for the trial report (:mod:`._report`): the unit of every
output and endpoint, numbers for tables, and the small HTML and figure helpers every
section uses."""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

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
    return e.kind.unit(e, output_unit(trial.model, e.output), tu)


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


def as_written(v) -> str:
    """A value from the specification as written (``18``, ``0.002``, ``12.5``)."""
    return f"{float(v):g}"


def unit_suffix(unit: str | None) -> str:
    return "" if unit in (None, "", "1") else f" {unit}"


def interval(lo, hi, scale: float = 1.0) -> str:
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return f"[{fmt(scale * lo)}, {fmt(scale * hi)}]"


def p_text(v) -> str:
    return "" if v is None or not np.isfinite(v) else format_p(v)


def ci_level(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


def esc(x) -> str:
    return html.escape(str(x))


def html_table(header: list[str], rows: list[list[str]], cls: str = "t") -> str:
    """An HTML table of already formatted strings (escaped here)."""
    if not rows:
        return "<p><em>none</em></p>"
    th = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def figure_html(fig, alt: str, cls: str, unit: str | None = None) -> str:
    extra = "" if unit is None else f" data-unit='{esc(unit)}'"
    return (
        f"<figure class='{cls}'{extra}><img alt='{esc(alt)}' "
        f"src='data:image/png;base64,{_png(fig)}'/><figcaption>{esc(alt)}</figcaption></figure>"
    )


def arm_colours(arms: list[str]) -> dict[str, str]:
    """One colour per arm, the same in every figure (tab10, then tab20)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(arms) <= 10 else "tab20"]
    return {a: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, a in enumerate(arms)}


def legend_outside(fig, leg, inches: float) -> None:
    """Lay the axes out in all but the right ``inches`` of the figure, which the legend
    (placed right of the axes) occupies: the legend never covers data."""
    leg.set_in_layout(False)
    fig.tight_layout(rect=(0.0, 0.0, 1.0 - inches / fig.get_figwidth(), 1.0))
    leg.set_in_layout(True)  # and the saved image's tight box includes it
