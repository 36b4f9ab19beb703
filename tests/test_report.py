"""The trial report (issue #18 item 5): first page, units, no NaN, formatted p-values,
one forest plot per unit family, sample-size warnings, folded subgroups.

One small PK/PD trial (8 patients per arm, 4-h grid) is simulated once for the module;
the other reports are rebuilt from its table without simulating again.
"""

import base64
import copy
import html.parser
import pathlib
import re
import tomllib

import numpy as np
import pandas as pd
import pytest

from twinjax.trial import Trial, TrialResult, _report, _stats

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "pkpd_trial.toml"
N = 8
# an endpoint that is missing for every patient: percent change of a concentration that
# is 0 at baseline (0/0); its cells must be empty, its power sizes reported as skipped
NAN_ENDPOINT = {
    "name": "C_pct_change",
    "kind": "change",
    "output": "pk.C",
    "time": 168.0,
    "percent": True,
}


def _spec(power_sizes=(3, 6, 40), nan_endpoint=True):
    spec = tomllib.loads(EXAMPLE.read_text())
    spec["trial"]["save_every"] = 4.0
    spec["statistics"].update(replicates=20, power_sizes=list(power_sizes), subgroups=["SEX"])
    spec["variability"] = {
        "error": [{"output": "pk.C", "cv": 0.1}],
        "dropout": {"hazard": 0.002, "analysis": "completers"},
    }
    if nan_endpoint:
        spec["endpoints"].append(dict(NAN_ENDPOINT))
    return spec


class _Tables(html.parser.HTMLParser):
    """Every ``<table>`` of a page as a list of rows of cell texts (header row first)."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _tables(text):
    p = _Tables()
    p.feed(text)
    return p.tables


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    t = Trial.from_dict(_spec()).with_sample_size(N)
    res = t.run(progress=False)
    out = tmp_path_factory.mktemp("report")
    text = res.write(out).read_text()
    return res, text


def test_first_page_design_patients_and_primary(run):
    res, text = run
    # the first page comes first: design, warnings, patients, primary, then the endpoints
    order = [text.index(f"id='{k}'") for k in ("design", "patients", "primary", "endpoints")]
    assert order == sorted(order)
    design = text[text.index("id='design'") : text.index("id='patients'")]
    assert "placebo (control)" in design and f"{N} patients" in design
    assert "3 mg into pk.depot at 0 h, then every 12 h (14 doses)" in design
    assert "duration 168 h" in design
    assert "measurement error on pk.C: CV 10 %" in design
    assert "dropout: hazard 0.002 per h; analysis population: completers" in design
    assert "Primary endpoint: <b>change_R_day7</b>" in design
    # patients: simulated / failed / dropped out / analysed, as in the table
    tab = res.table
    pt = next(t for t in _tables(text) if t[0][0] == "arm" and "simulated (patients)" in t[0])
    for row in pt[1:-1]:
        arm = tab[tab["arm"] == row[0]]
        ok = arm["status"] == 0
        analysed = ok & ~arm["dropped"] & np.isfinite(arm["change_R_day7"].astype(float))
        want = [len(arm), int((~ok).sum()), int((arm["dropped"] & ok).sum()), int(analysed.sum())]
        assert [int(v) for v in row[1:]] == want, row
    assert pt[-1][0] == "total" and int(pt[-1][1]) == 3 * N
    assert sum(int(r[3]) for r in pt[1:-1]) > 0  # the hazard makes some patients drop out
    # the primary endpoint: per-arm estimate with its unit, difference, CI and p-values
    primary = text[text.index("id='primary'") : text.index("id='endpoints'")]
    pr = _tables(primary)
    assert pr[0][0] == ["arm", "n (patients)", "mean (%) (SD)"]
    assert all(re.fullmatch(r"-?[\d.]+ % \(SD [\d.]+\)", r[2]) for r in pr[0][1:]), pr[0]
    assert pr[1][0][:5] == ["comparison", "difference (%)", "95% CI (%)", "p", "p (Holm)"]
    assert [r[0] for r in pr[1][1:]] == ["3 mg q12h - placebo", "15 mg q12h - placebo"]


def test_tables_have_no_nan_and_empty_cells_for_missing_values(run):
    res, text = run
    cells = [c for t in _tables(text) for r in t for c in r]
    assert cells and not [c for c in cells if re.search(r"\bnan\b|\binf\b", c, re.I)]
    visible = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"\bnan\b", visible, re.I)
    # the all-missing endpoint: NaN in the statistics, empty cells in the report
    s = res.summary.set_index(["endpoint", "arm"])
    assert (s.loc["C_pct_change", "n"] == 0).all() and s.loc["C_pct_change", "mean"].isna().all()
    sec = text[text.index("<h3 id='endpoint-5'>") : text.index("id='forest'")]
    summ, comp = _tables(sec)[:2]
    assert all(r[1] == "0" and r[2:] == ["", "", "", ""] for r in summ[1:]), summ
    assert all(r[1:] == ["", "", "", ""] for r in comp[1:]), comp


def test_p_values_formatted(run):
    _, text = run
    n = 0
    for t in _tables(text):
        cols = [i for i, h in enumerate(t[0]) if re.fullmatch(r"(ANCOVA )?p( \(Holm\))?", h)]
        for r in t[1:]:
            for i in cols:
                n += 1
                assert re.fullmatch(r"|< 0\.001|0\.\d{3,}|1\.00", r[i]), (t[0][i], r[i])
    assert n > 20
    assert "&lt; 0.001" in text  # the dose effects on exposure are unmistakable


def test_format_of_extreme_and_boundary_p_values(run):
    """The cases of the issue: p = 7.995e-289 and 0/50 vs 5/50 (Newcombe p 0.0360)."""
    res, _ = run
    arm = lambda k, n: np.r_[np.ones(k), np.zeros(n - k)].astype(bool)  # noqa: E731
    comp = _stats.adjust(
        pd.DataFrame(
            [
                {"endpoint": "responder_20pct", "arm": "3 mg q12h",
                 **_stats.compare(arm(50, 50), arm(0, 50), True, 0.1)},
                {"endpoint": "responder_20pct", "arm": "15 mg q12h",
                 **_stats.compare(arm(0, 50), arm(5, 50), True, 0.1)},
            ]
        )
    )  # fmt: skip
    comp.loc[0, "p_value"] = 7.995e-289
    fake = copy.copy(res)
    fake.comparisons = comp
    fake.trial = copy.copy(res.trial)
    fake.trial.alpha = 0.1
    e = next(e for e in res.trial.endpoints if e.name == "responder_20pct")
    header = _report._comparison_header(fake, e)
    rows = _report._comparison_rows(fake, e)
    assert header[:3] == [
        "comparison",
        "difference (percentage points)",
        "90% CI (percentage points)",
    ]
    # statsmodels confint_proportions_2indep(..., method="newcomb", alpha=0.1):
    # 0/50 - 50/50: (-1.0, -0.92740); 5/50 - 0/50: (0.028011, 0.191538)
    assert rows[0][1:4] == ["-100 percentage points", "[-100, -92.7]", "< 0.001"]
    assert rows[1][1:4] == ["10.0 percentage points", "[2.80, 19.2]", "0.0360"]
    assert not any("e-" in c or c == "0" for r in rows for c in r[3:])


def test_one_forest_plot_per_unit_family(run):
    res, text = run
    forests = re.findall(r"<figure class='forest' data-unit='([^']*)'>", text)
    units = {e.name: _report.difference_unit(res.trial, e) for e in res.trial.endpoints}
    assert units == {
        "change_R_day7": "% (percent change)",
        "responder_20pct": "percentage points",
        "Cmax_day7": "mg/L",
        "AUC_day7": "mg/L·h",
        "high_exposure": "percentage points",
        "C_pct_change": "% (percent change)",
    }
    assert sorted(forests) == sorted(set(units.values()))  # one each, none mixed
    for img in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text):
        assert base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"<img[^>]+src='(?!data:)", text)  # one self-contained file
    # one distribution figure per endpoint, one power figure per endpoint with power
    assert text.count("<figure class='dist'") == len(res.trial.endpoints)
    assert text.count("<figure class='power'") == res.power["endpoint"].nunique() == 5


def test_units_on_every_endpoint_table(run):
    res, text = run
    want = {
        "change_R_day7": "mean (%)",
        "Cmax_day7": "mean (mg/L)",
        "AUC_day7": "mean (mg/L·h)",
        "responder_20pct": "events / n (%)",
        "high_exposure": "events / n (%)",
    }
    for i, e in enumerate(res.trial.endpoints[:5]):
        sec = text[text.index(f"<h3 id='endpoint-{i}'>") :]
        summ, comp = _tables(sec)[:2]
        assert want[e.name] in summ[0], (e.name, summ[0])
        numeric = [h for h in summ[0][1:] if h != "interval method"]
        assert all("(" in h for h in numeric), summ[0]  # every number column has a unit
        assert all("(" in h for h in comp[0][1:3]), comp[0]
    assert "unit: mg/L·h" in text and "pk.C (mg/L)" not in text  # axis labels are in PNGs


def test_sample_size_warnings_instead_of_silent_drops(run, tmp_path):
    res, text = run
    assert res.trial.dropped_power_sizes == (40,) and res.trial.power_sizes == [3, 6]
    warn = text[text.index("id='warnings'") : text.index("id='patients'")]
    assert f"Power-curve sizes [40] per arm exceed the {N} patients simulated" in warn
    # the all-missing endpoint has no patient to draw: its sizes are listed, not dropped
    assert "C_pct_change, 3 mg q12h vs placebo: power-curve sizes [3, 6]" in warn
    sk = res.power_skipped
    assert (sk.loc[sk["endpoint"] == "C_pct_change", "available"] == 0).all()
    assert (sk["n_per_arm"] > sk["available"]).all()
    # every size of every comparison is in the power table or listed as skipped, once
    done = set(zip(res.power["endpoint"], res.power["arm"], res.power["n_per_arm"]))
    skipped = set(zip(sk["endpoint"], sk["arm"], sk["n_per_arm"]))
    combos = {
        (e.name, a.name, s) for e in res.trial.endpoints for a in res.trial.arms[1:] for s in (3, 6)
    }
    assert done | skipped == combos and not done & skipped
    for (ep, arm), g in sk.groupby(["endpoint", "arm"]):  # each stated in the report
        sizes, avail = sorted(int(v) for v in g["n_per_arm"]), int(g["available"].iloc[0])
        assert f"{ep}, {arm} vs placebo: power-curve sizes {sizes} per arm exceed the {avail}" in (
            warn
        )
    # the same patients analysed with sizes that fit: no warning at all
    t2 = Trial.from_dict(_spec(power_sizes=(2,), nan_endpoint=False)).with_sample_size(N)
    res2 = TrialResult(t2, res.table, res.bands, res.times, res.seconds)
    assert res2.warnings == [] and len(res2.power_skipped) == 0
    text2 = _report.write_report(res2, tmp_path / "report.html").read_text()
    assert "Sample-size warnings" not in text2 and "id='warnings'" not in text2


def test_subgroups_folded_away(run):
    res, text = run
    assert len(res.subgroups)
    start = text.index("<details id='subgroups'>")
    assert text.index("</details>", start) > text.index("SEX=", start)
    assert text.index("SEX=") > start  # no subgroup row outside the folded section


def test_output_units_follow_the_models():
    from twinjax.models import pbpk, pk
    from twinjax.models._registry import get_model
    from twinjax.models.glucose import UvaPadova

    m = pk.two_compartment("first_order")
    assert _report.output_unit(m, "C") == f"{m.state('central').unit}/{m.param('V').unit}"
    g = UvaPadova()
    per_kg = lambda a, b: f"{a.removesuffix('/kg')}/{b.removesuffix('/kg')}"  # noqa: E731
    assert _report.output_unit(g, "G") == per_kg(g.state("Gp").unit, g.param("Vg").unit)
    assert _report.output_unit(g, "I") == per_kg(g.state("Ip").unit, g.param("Vi").unit)
    assert _report.output_unit(g, "EGP") == g.param("kp1").unit
    assert _report.output_unit(pbpk.MinimalPBPK(), "C") == "mg/L"
    twin = get_model("pk_circulation")
    assert _report.output_unit(twin, "circ.MAP") == "mmHg"
    assert _report.output_unit(twin, "circ.CO") == "L/min"
    assert _report.output_unit(twin, "pk.C") == "mg/L"
    assert _report.output_unit(twin, "pk.depot") == "mg"
    assert _report.output_unit(m, "nothing") is None


def test_fmt_never_prints_nan_or_exponents():
    assert [_report.fmt(v) for v in (np.nan, None, np.inf, 0.0)] == ["", "", "", "0"]
    assert _report.fmt(1234.56) == "1235" and _report.fmt(-8.8412) == "-8.84"
    assert _report.fmt(0.0012345) == "0.00123" and _report.fmt(12.0) == "12.0"
