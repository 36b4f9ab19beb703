"""`twinjax fit SPEC.toml [DATA.csv] --out DIR` (issue #17 item 8): the theophylline fit
writes the report and tables with nlmixr2's FOCEi estimates; bad specifications and
data are refused, naming the key (or line and column), before anything is fitted; a
folder twinjax did not write is never overwritten."""

import hashlib
import json
import pathlib

import pandas as pd
import pytest
from typer.testing import CliRunner

import twinjax as tj
from twinjax.calibrate._fitspec import fit_spec_from_dict
from twinjax.cli import app
from twinjax.trial import SpecError

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fit_theophylline.toml"
REFERENCE = ROOT / "calibration" / "results" / "theophylline_population.csv"

GOOD = {
    "fit": {"model": "pk1_oral", "method": "foce-i", "data": "theophylline"},
    "parameters": {
        "KA": {"value": 1.0, "iiv": 0.3},
        "CL": {"value": 3.0, "iiv": 0.3},
        "V": {"value": 30.0, "iiv": 0.3},
    },
    "error": {"kind": "additive", "add": 1.0},
}


def _with(**changes):
    """GOOD with some tables replaced (a value None deletes the table)."""
    spec = json.loads(json.dumps(GOOD))
    for k, v in changes.items():
        if v is None:
            spec.pop(k, None)
        else:
            spec[k] = v
    return spec


@pytest.mark.parametrize(
    "spec, message",
    [
        (_with(fit={**GOOD["fit"], "methd": "map"}), "unknown key 'methd' in [fit]"),
        (_with(fit={**GOOD["fit"], "method": "nuts"}), "[fit].method: 'nuts' is not one of"),
        (_with(fit={**GOOD["fit"], "model": "pk9"}), "[fit].model"),
        (_with(fit={"method": "foce-i"}), "[fit].model: missing"),
        (
            _with(parameters={**GOOD["parameters"], "CLX": {"value": 1}}),
            "[parameters.CLX]: unknown parameter 'CLX'",
        ),
        (
            _with(parameters={**GOOD["parameters"], "KA": {"value": 50.0, "upper": 20.0}}),
            "[parameters.KA].value: 50 is outside the bounds",
        ),
        (
            _with(parameters={**GOOD["parameters"], "V": {"value": -3.0, "iiv": 0.3}}),
            "[parameters.V].value",
        ),
        (
            _with(parameters={**GOOD["parameters"], "CL": {"value": 3.0, "iiv": "0.3"}}),
            "[parameters.CL].iiv: expected a number",
        ),
        (_with(error={"kind": "proportional", "add": 1.0}), "[error].prop: missing"),
        (_with(error={"kind": "poisson"}), "[error].kind: 'poisson' is not one of"),
        (_with(error=None), "[error]: missing"),
        (
            _with(covariates=[{"parameter": "CL", "covariate": "WT", "model": "allometric"}]),
            "[[covariates]][0].model: 'allometric' is not one of",
        ),
        (
            _with(covariates=[{"parameter": "CL", "covariate": "WT", "model": "power"}]),
            "[[covariates]][0].theta: missing",
        ),
        (_with(censoring={"method": "m5"}), "[censoring].method: 'm5' is not one of"),
        (_with(diagnostics={"n_sim": 5}), "[diagnostics].n_sim: must be in [20, 100000]"),
        (_with(saem={"n_em": 100}), "[saem]: only used with method = 'saem'"),
        (
            _with(fit={**GOOD["fit"], "method": "saem"}, saem={"n_em": 0}),
            "[saem].n_em: must be in [1, 100000]",
        ),
        (
            _with(
                fit={**GOOD["fit"], "method": "saem"},
                parameters={**GOOD["parameters"], "F": {"value": 0.9}},
            ),
            "saem estimates only typical values with IIV; ['F'] have no iiv",
        ),
        (
            _with(
                fit={**GOOD["fit"], "method": "map"},
                covariates=[
                    {"parameter": "CL", "covariate": "WT", "theta": 0.75, "estimate": True}
                ],
            ),
            "[[covariates]][0].estimate: covariate coefficients are estimated by foce-i and "
            "saem, not map",
        ),
        (
            _with(
                covariates=[{"parameter": "CL", "covariate": "WT", "theta": 0.75, "bounds": [1, 0]}]
            ),
            "[[covariates]][0].bounds: expected [lower, upper] with lower < upper",
        ),
        (
            _with(parameters={**GOOD["parameters"], "CL": {"value": 3.0, "iiv": 0.3, "iov": -0.1}}),
            "[parameters.CL].iov",
        ),
    ],
)
def test_bad_specifications_name_their_key(spec, message):
    with pytest.raises(SpecError) as err:
        fit_spec_from_dict(spec)
    assert message in str(err.value)


def test_the_example_and_covariate_effects_parse():
    from twinjax.calibrate._fitspec import load_fit_spec

    fs = load_fit_spec(EXAMPLE)
    assert fs.method == "foce-i" and fs.estimate == ("KA", "CL", "V")
    assert fs.bounds["KA"] == (0.05, 20.0) and fs.data == "theophylline"
    assert fs.population.omega.shape == (3, 3) and len(fs.sha256) == 64
    cov = [{"parameter": "CL", "covariate": "WT", "model": "power", "theta": 0.75}]
    fs = fit_spec_from_dict(_with(covariates=cov))
    (c,) = fs.population.covariates
    assert type(c).__name__ == "Power" and c.theta == 0.75 and c.ref == 70.0
    assert not c.estimate
    cov[0].update(estimate=True, bounds=[0.0, 2.0], name="CL_WT")
    (c,) = fit_spec_from_dict(_with(covariates=cov)).population.covariates
    assert c.estimate and c.bounds == (0.0, 2.0) and c.label() == "CL_WT"
    fs = fit_spec_from_dict(_with(fit={**GOOD["fit"], "method": "saem"}, saem={"n_em": 50}))
    assert fs.method == "saem" and fs.saem == {"n_em": 50}
    assert fs.iov == {} and fs.occasion == "OCC"
    iov = {**GOOD["parameters"], "CL": {"value": 3.0, "iiv": 0.3, "iov": 0.05}}
    fs = fit_spec_from_dict(_with(parameters=iov, fit={**GOOD["fit"], "occasion": "VISIT"}))
    assert fs.iov == {"CL": 0.05} and fs.occasion == "VISIT"


def _cli(*args):
    return CliRunner().invoke(app, ["fit", *map(str, args)])


def _theo_csv(tmp_path, edit=None):
    text = tj.data.datasets.path("theophylline").read_text().splitlines()
    if edit:
        edit(text)
    p = tmp_path / "theo.csv"
    p.write_text("\n".join(text) + "\n")
    return p


def test_bad_spec_file_and_data_rows_refused_before_fitting(tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("[parameters.CL]", "[parameters.CLEARANCE]"))
    r = _cli(bad, "--out", out)
    assert r.exit_code == 2, r.output
    assert "[parameters.CLEARANCE]: unknown parameter 'CLEARANCE'" in r.output
    assert not out.exists()  # nothing claimed, nothing fitted

    def text_time(lines):  # line 5 of the file: a TIME that is not a number
        f = lines[4].split(",")
        f[1] = "1.5h"
        lines[4] = ",".join(f)

    r = _cli(EXAMPLE, _theo_csv(tmp_path, text_time), "--out", out)
    assert r.exit_code == 2, r.output
    assert "line 5" in r.output and "TIME" in r.output and "1.5h" in r.output
    assert not out.exists()

    def backwards(lines):  # line 6 earlier than line 5 within subject 1
        f = lines[5].split(",")
        f[1] = "0.1"
        lines[5] = ",".join(f)

    r = _cli(EXAMPLE, _theo_csv(tmp_path, backwards), "--out", out)
    assert r.exit_code == 2, r.output
    assert "line 6" in r.output and "TIME" in r.output
    assert not out.exists()

    def dvid(lines):  # a DVID column; the observation on line 7 tagged 3 (not fitted)
        lines[0] += ",DVID"
        for i in range(1, len(lines)):
            lines[i] += ",3" if i == 6 else ",1"

    tagged = _theo_csv(tmp_path, dvid)
    r = _cli(EXAMPLE, tagged, "--out", out)
    assert r.exit_code == 2, r.output
    assert "[error]: the data tag observations with DVID values [1, 3]" in r.output
    assert not out.exists()
    one = tmp_path / "dvid1.toml"
    one.write_text(EXAMPLE.read_text().replace("add = 1.0 ", "add = 1.0\ndvid = 1 "))
    r = _cli(one, tagged, "--out", out)
    assert r.exit_code == 2, r.output
    assert "line 7" in r.output and "DVID" in r.output and "3" in r.output
    assert not out.exists()

    cov = tmp_path / "cov.toml"
    cov.write_text(
        EXAMPLE.read_text()
        + '\n[[covariates]]\nparameter = "CL"\ncovariate = "AGE"\nmodel = "linear"\n'
        "theta = 0.01\nreference = 40.0\n"
    )
    r = _cli(cov, "--out", out)
    assert r.exit_code == 2, r.output
    assert "[[covariates]][0].covariate: 'AGE' is not a column of the dataset" in r.output
    assert "'WT'" in r.output
    assert not out.exists()


def test_saem_with_iov_hands_the_occasions_to_saem(tmp_path, monkeypatch):
    """method = "saem" with iov (refused before SAEM modelled IOV) is accepted, and
    `twinjax fit` passes iov and the occasion column on to saem (the SAEM fit with IOV
    itself: tests/test_saem_iov.py)."""
    iov = {**GOOD["parameters"], "CL": {"value": 3.0, "iiv": 0.3, "iov": 0.1}}
    fs = fit_spec_from_dict(_with(fit={**GOOD["fit"], "method": "saem"}, parameters=iov))
    assert fs.method == "saem" and fs.iov == {"CL": 0.1} and fs.occasion == "OCC"
    calls = []

    def fake_saem(*args, **kwargs):
        calls.append(kwargs)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(tj.calibrate._saem, "saem", fake_saem)

    def occasions(lines):  # OCC: 1 before 12 h, 2 after
        lines[0] += ",OCC"
        for i in range(1, len(lines)):
            lines[i] += ",1" if float(lines[i].split(",")[1]) < 12 else ",2"

    spec = tmp_path / "saem_iov.toml"
    text = EXAMPLE.read_text().replace('method = "foce-i"', 'method = "saem"')
    spec.write_text(text.replace("[parameters.CL]\n", "[parameters.CL]\niov = 0.1\n"))
    r = _cli(spec, _theo_csv(tmp_path, occasions), "--out", tmp_path / "out")
    assert "stopped by the test" in r.output, r.output
    assert len(calls) == 1 and calls[0]["iov"] == {"CL": 0.1}
    assert calls[0]["occasion_column"] == "OCC"


def test_iov_without_an_occasion_column_is_refused_before_fitting(tmp_path):
    spec = tmp_path / "iov.toml"
    spec.write_text(
        EXAMPLE.read_text().replace("[parameters.CL]\n", "[parameters.CL]\niov = 0.05\n")
    )
    assert "iov = 0.05" in spec.read_text()
    out = tmp_path / "out"
    r = _cli(spec, "--out", out)
    assert r.exit_code == 2, r.output
    assert "[fit].occasion" in r.output and "no occasion column 'OCC'" in r.output
    assert not out.exists()


@pytest.mark.slow
def test_iov_fit_from_a_specification(tmp_path):
    """FOCE-I with IOV on CL from a specification: 12 subjects x 2 occasions simulated
    with omega_iov^2 = 0.0625 (tests/test_iov_fit.py's cohort); the estimate and its
    log-scale 95 % interval are in estimates.csv."""
    from test_iov_fit import simulate_cohort

    ds, _ = simulate_cohort(12, 2, seed=5)
    data = tmp_path / "occ.csv"
    ds.to_csv(data)
    spec = tmp_path / "iov.toml"
    spec.write_text(
        '[fit]\nmodel = "pk1_oral"\nmethod = "foce-i"\n'
        "[parameters.KA]\nvalue = 1.2\niiv = 0.2\n"
        "[parameters.CL]\nvalue = 2.5\niiv = 0.2\niov = 0.05\n"
        "[parameters.V]\nvalue = 25.0\niiv = 0.2\n"
        '[error]\nkind = "proportional"\nprop = 0.2\n'
        "[diagnostics]\nnpde = false\n"
    )
    out = tmp_path / "out"
    r = _cli(spec, data, "--out", out)
    assert r.exit_code == 0, r.output
    est = pd.read_csv(out / "estimates.csv", index_col="parameter")
    row = est.loc["OMEGA_IOV(CL)"]
    assert row.ci_method == "log scale" and row.se > 0
    assert row.ci95_lo < 0.0625 < row.ci95_hi  # the truth inside its interval
    assert 0.5 * 0.0625 < row.estimate < 2.0 * 0.0625
    occ = pd.read_csv(out / "occasions.csv")  # kappa and CL per subject and occasion
    assert list(occ.columns) == ["ID", "OCC", "START", "kappa_CL", "CL"] and len(occ) == 24
    assert occ.kappa_CL.std() > 0.05 and (occ.CL > 0).all()


def test_a_user_folder_is_never_overwritten(tmp_path):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "estimates.csv").write_text("my own estimates")
    r = _cli(EXAMPLE, "--out", mine)
    assert r.exit_code == 2, r.output
    assert "not empty and was not written by twinjax" in r.output
    assert (mine / "estimates.csv").read_text() == "my own estimates"
    assert sorted(p.name for p in mine.iterdir()) == ["estimates.csv"]


@pytest.fixture(scope="module")
def theo_fit(tmp_path_factory):
    """The one FOCE-I fit of this file: the shipped example on the shipped data (with
    the progress display, which a non-terminal console shows without animation)."""
    out = tmp_path_factory.mktemp("fit") / "theo"
    r = _cli(EXAMPLE, "--out", out)
    return r, out


@pytest.mark.slow
def test_theophylline_fit_writes_report_and_matches_the_reference(theo_fit):
    r, out = theo_fit
    print(r.output)
    assert r.exit_code == 0, r.output
    assert "fit: FOCE-I: 3 typical values, Omega diagonal" in r.output
    files = {p.name for p in out.iterdir()}
    want = {"report.html", "estimates.csv", "individual.csv", "observations.csv", "fit.json"}
    assert want | {"gof.png", "eta_covariates.png", "vpc.png", "pcvpc.png"} <= files
    est = pd.read_csv(out / "estimates.csv", index_col="parameter")
    ref = pd.read_csv(REFERENCE, index_col="parameter")
    for p in ("KA", "CL", "V"):
        assert est.loc[p, "estimate"] == pytest.approx(ref.loc[p, "estimate"], rel=0.01)
        lo, hi = est.loc[p, "ci95_lo"], est.loc[p, "ci95_hi"]
        assert lo < est.loc[p, "estimate"] < hi and est.loc[p, "rse_pct"] > 0
    # nlmixr2 FOCEi (issue #17): ka 1.59, CL 2.75, V 31.8
    for p, v in {"KA": 1.59, "CL": 2.75, "V": 31.8}.items():
        assert est.loc[p, "estimate"] == pytest.approx(v, rel=0.01)
    assert est.loc["SIGMA_add", "estimate"] == pytest.approx(0.694, rel=0.02)
    ind = pd.read_csv(out / "individual.csv")
    assert len(ind) == 12 and {"ETA_KA", "ETA_CL", "ETA_V", "SE_CL"} <= set(ind.columns)
    obs = pd.read_csv(out / "observations.csv")
    assert len(obs) == 132 and obs[["CWRES", "NPDE"]].notna().all().all()
    rec = json.loads((out / "fit.json").read_text())
    shipped = tj.data.datasets.path("theophylline").read_bytes()
    assert rec["record"]["data_sha256"] == hashlib.sha256(shipped).hexdigest()
    assert rec["record"]["spec_sha256"] == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    assert rec["summary"]["ofv"] == pytest.approx(116.80, abs=0.05)
    assert rec["summary"]["converged"] is True
    assert set(rec["summary"]["shrinkage"]) == {"KA", "CL", "V"}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    # "nlmixr2": from the specification's comments, whose text the run record embeds
    for text in ("OFV", "Eta-shrinkage", "NPDE", "95 % CI", "Run record", "nlmixr2"):
        assert text in html
    # a rerun may reuse its own folder, but not another kind of run's
    trial_out = out.parent / "trial_folder"
    trial_out.mkdir()
    (trial_out / ".twinjax").write_text(json.dumps({"kind": "trial"}))
    r2 = _cli(EXAMPLE, "--out", trial_out)
    assert r2.exit_code == 2 and "not of a fit run" in r2.output


def test_several_outputs_in_a_specification():
    errors = {
        "pk.C": {"kind": "proportional", "prop": 0.2, "dvid": 1},
        "pd.E": {"kind": "additive", "add": 3.0, "dvid": 2},
    }
    spec = {
        "fit": {"model": "pkpd_emax"},
        "parameters": {"pk.CL": {"value": 2.0, "iiv": 0.1}, "pd.EC50": {"value": 3.0}},
        "error": errors,
    }
    fs = fit_spec_from_dict(spec)
    assert fs.outputs == ("pk.C", "pd.E") and fs.dvid == {1: "pk.C", 2: "pd.E"}
    assert fs.errors["pd.E"].kind == "additive" and fs.estimate == ("pk.CL", "pd.EC50")
    with pytest.raises(SpecError, match=r"\[fit\]\.output: not used with one"):
        fit_spec_from_dict({**spec, "fit": {"model": "pkpd_emax", "output": "pk.C"}})
    spec["error"] = {**errors, "pd.X": {"kind": "additive", "add": 1.0}}
    with pytest.raises(SpecError, match=r"\[error\.pd\.X\]: unknown output 'pd\.X'"):
        fit_spec_from_dict(spec)


def test_foce_i_holds_the_typical_values_inside_their_bounds(tmp_path, monkeypatch):
    """`twinjax fit` hands the bounds of the estimated typical values to FOCE-I, which
    holds them inside by a transform (fit_population(bounds=): tests/test_iov_uncertainty.py
    ::test_bounds_hold_a_typical_value_inside), and to SAEM, which holds them in its M-step
    (saem(bounds=): tests/test_saem.py); a FOCE-I or SAEM start on a bound is refused
    naming the key, before fitting (MAP estimates no typical value: accepted)."""
    calls = []

    def fake_fit(*args, **kwargs):
        calls.append(kwargs)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(tj.calibrate._nlme, "fit_population", fake_fit)
    r = _cli(EXAMPLE, "--out", tmp_path / "out")
    assert "stopped by the test" in r.output, r.output
    assert calls[0]["bounds"] == {"KA": (0.05, 20.0), "CL": (0.1, 50.0), "V": (1.0, 500.0)}
    on_bound = {**GOOD["parameters"], "KA": {"value": 0.05, "iiv": 0.3, "lower": 0.05}}
    with pytest.raises(SpecError, match=r"\[parameters.KA\].value: 0.05 is on a bound"):
        fit_spec_from_dict(_with(parameters=on_bound))
    with pytest.raises(SpecError, match=r"\[parameters.KA\].value: 0.05 is on a bound"):
        fit_spec_from_dict(_with(parameters=on_bound, fit={**GOOD["fit"], "method": "saem"}))
    # one side given, the other the model's limit: a start on that limit is on a bound
    tlag = {**GOOD["parameters"], "TLAG": {"value": 0.0, "iiv": 0.1, "upper": 2.0}}
    with pytest.raises(SpecError, match=r"\[parameters.TLAG\].value: 0 is on a bound of \[0, 2\]"):
        fit_spec_from_dict(_with(parameters=tlag, fit={**GOOD["fit"], "method": "saem"}))
    calls.clear()

    def fake_saem(*args, **kwargs):
        calls.append(kwargs)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(tj.calibrate._saem, "saem", fake_saem)
    spec = tmp_path / "saem.toml"
    spec.write_text(EXAMPLE.read_text().replace('method = "foce-i"', 'method = "saem"'))
    r = _cli(spec, "--out", tmp_path / "out_saem")
    assert "stopped by the test" in r.output, r.output
    assert calls[0]["bounds"] == {"KA": (0.05, 20.0), "CL": (0.1, 50.0), "V": (1.0, 500.0)}
