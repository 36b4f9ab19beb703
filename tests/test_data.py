"""twinjax.data: NONMEM reading, validation, Dataset, round trip, shipped datasets."""

import io

import numpy as np
import pandas as pd
import pytest

import twinjax
from twinjax import Dose, Regimen, Reset
from twinjax.data import Dataset, DatasetError, datasets, read_nonmem
from twinjax.models import pk

HEADER = "ID,TIME,DV,AMT,EVID,CMT,RATE,DUR,II,ADDL,SS,MDV"
GOOD = f"""{HEADER},WT
1,0,.,100,1,1,0,0,0,0,0,1,70
1,0.5,2.1,0,0,2,0,0,0,0,0,0,70
1,2,3.5,0,0,2,0,0,0,0,0,0,70
2,0,.,200,1,1,0,0,12,2,0,1,80
2,1,4.0,0,0,2,0,0,0,0,0,0,80
"""
COMP = {1: "depot", 2: "central"}


def read(text, **kw):
    kw.setdefault("compartments", COMP)
    return read_nonmem(io.StringIO(text), **kw)


def bad(text, line, column, *words, **kw):
    """Reading ``text`` fails; the message names ``line`` and ``column`` (and ``words``)."""
    with pytest.raises(DatasetError) as info:
        read(text, **kw)
    msg = str(info.value)
    assert f"line {line}, column {column}" in msg, msg
    for w in words:
        assert w in msg, msg
    assert any(p.line == line and p.column == column for p in info.value.problems)
    return info.value


def edit(line_no, new):
    """GOOD with file line ``line_no`` (header = 1) replaced by ``new``."""
    lines = GOOD.splitlines()
    lines[line_no - 1] = new
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ reading


def test_read_good():
    ds = read(GOOD)
    assert len(ds) == 2 and ds.ids == [1, 2]
    assert list(ds.data.columns) == HEADER.split(",") + ["WT"]
    assert ds.covariate_names == ["WT"]
    assert ds.covariates.loc[2, "WT"] == 80.0
    s = ds.subject(1)
    np.testing.assert_array_equal(s.times, [0.5, 2.0])
    np.testing.assert_array_equal(s.dv, [2.1, 3.5])
    np.testing.assert_array_equal(s.mdv, [0, 0])
    np.testing.assert_array_equal(s.lines, [2, 3, 4])
    (d,) = ds.regimens[1].doses
    assert (d.amt, d.cmt, d.time, d.ii, d.addl) == (200.0, "depot", 0.0, 12.0, 2)
    assert "2 subjects" in repr(ds) and "5 records" in repr(ds)


def test_defaults_and_inference():
    # only ID, TIME, DV, AMT: EVID from AMT > 0, MDV from EVID/DV, CMT -> compartment 1
    text = "id,time,dv,amt\n1,0,.,5\n1,1,0.4,.\n1,2,.,0\n"
    ds = read(text, compartments=["central"])
    f = ds.data
    assert f["EVID"].tolist() == [1, 0, 0]
    assert f["MDV"].tolist() == [1, 0, 1]
    assert f["CMT"].tolist() == [0, 0, 0]
    (d,) = ds.regimens[0].doses
    assert d.cmt == "central" and d.amt == 5.0
    p = ds.padded()
    np.testing.assert_array_equal(p.mask, [[True, False]])


def test_cmt_names_and_model_compartments():
    text = "ID,TIME,DV,AMT,CMT\n1,0,.,5,depot\n1,1,0.4,0,central\n"
    ds = read(text, compartments=["depot", "central"])
    assert ds.regimens[0].doses[0].cmt == "depot"
    # a Model: CMT k is its k-th state (NONMEM numbering)
    model = pk.one_compartment(absorption="first_order")
    ds = read(GOOD, compartments=model)
    assert ds.regimens[0].doses[0].cmt == "depot"


def test_event_types():
    text = f"""{HEADER}
1,0,.,100,1,2,10,0,0,0,0,1
1,5,.,0,3,0,0,0,0,0,0,1
1,6,.,50,4,2,0,2,0,0,0,1
1,7,.,0,2,0,0,0,0,0,0,1
1,8,1.5,0,0,2,0,0,0,0,0,0
"""
    ds = read(text)
    d1, r, d4 = ds.regimens[0].doses
    assert isinstance(d1, Dose) and d1.rate == 10.0 and d1.cmt == "central"
    assert isinstance(r, Reset) and r.time == 5.0
    assert isinstance(d4, Dose) and d4.evid == 4 and d4.dur == 2.0
    assert ds.subject(1).times.tolist() == [8.0]


def test_does_not_modify_input(tmp_path):
    frame = pd.read_csv(io.StringIO(GOOD), dtype=str, keep_default_na=False)
    before = frame.copy()
    ds = read_nonmem(frame, compartments=COMP)
    assert ds.data["TIME"].dtype == float
    pd.testing.assert_frame_equal(frame, before)
    ds2 = Dataset(frame, COMP)
    assert ds2.equals(ds)
    f = tmp_path / "d.csv"
    f.write_text(GOOD)
    read_nonmem(f, compartments=COMP)
    assert f.read_text() == GOOD


def test_whitespace_and_comments():
    text = "# a comment\nID TIME DV AMT\n1 0 . 10\n\n1 1 2.5 0\n"
    ds = read(text, compartments=["central"])
    np.testing.assert_array_equal(ds.lines, [3, 5])
    assert ds.subject(1).dv.tolist() == [2.5]


# --------------------------------------------------------------------------- validation


def test_missing_required_column():
    bad("ID,TIME,AMT\n1,0,5\n", 1, "DV", "required column DV")


def test_non_numeric_value():
    bad(edit(3, "1,0.5,abc,0,0,2,0,0,0,0,0,0,70"), 3, "DV", "'abc' is not a number")
    bad(edit(3, "1,1h,2.1,0,0,2,0,0,0,0,0,0,70"), 3, "TIME", "'1h'")


def test_time_backwards():
    bad(edit(4, "1,0.25,3.5,0,0,2,0,0,0,0,0,0,70"), 4, "TIME", "backwards", "line 3")


def test_unknown_compartment():
    err = bad(edit(2, "1,0,.,100,1,7,0,0,0,0,0,1,70"), 2, "CMT", "1 (depot), 2 (central)")
    assert "CMT 7" in str(err)
    text = "ID,TIME,DV,AMT,CMT\n1,0,.,5,gut\n"
    bad(text, 2, "CMT", "'gut'", "2 (central)", compartments=["depot", "central"])


def test_negative_amount():
    bad(edit(2, "1,0,.,-100,1,1,0,0,0,0,0,1,70"), 2, "AMT", "negative")


def test_mdv_with_dv():
    bad(edit(3, "1,0.5,2.1,0,0,2,0,0,0,0,0,1,70"), 3, "DV", "MDV is 1")
    # DV 0 or '.' on a record without an observation is fine
    read(edit(2, "1,0,0,100,1,1,0,0,0,0,0,1,70"))


def test_observation_without_dv():
    bad(edit(3, "1,0.5,.,0,0,2,0,0,0,0,0,0,70"), 3, "DV", "no DV")


def test_duplicate_record():
    text = GOOD + "2,1,4.0,0,0,2,0,0,0,0,0,0,80\n"
    bad(text, 7, "ID/TIME", "duplicated", "line 6")


def test_bad_evid():
    bad(edit(3, "1,0.5,2.1,0,5,2,0,0,0,0,0,0,70"), 3, "EVID", "0, 1, 2, 3, 4")


def test_rate_and_dur():
    bad(edit(2, "1,0,.,100,1,1,10,2,0,0,0,1,70"), 2, "DUR", "RATE", "DUR")


def test_addl_without_ii():
    bad(edit(5, "2,0,.,200,1,1,0,0,0,2,0,1,80"), 5, "II", "ADDL")


def test_unsupported_rate_and_ss():
    bad(edit(2, "1,0,.,100,1,1,-3,0,0,0,0,1,70"), 2, "RATE", "negative RATE -3", "-1", "-2")
    bad(edit(2, "1,0,.,100,1,1,0,0,12,0,3,1,70"), 2, "SS")  # SS 3: not a NONMEM value


def test_modelled_rate_and_duration():
    """RATE -1 / -2 are read (the rate / duration is the compartment's Rn / Dn); into a
    compartment of the given model without Rn / Dn they are refused, naming the line."""
    from twinjax.models import pk

    ds = read(edit(2, "1,0,.,100,1,1,-2,0,0,0,0,1,70"))
    dose = ds.regimens[0].doses[0]
    assert dose.rate == -2 and dose.modelled == -2 and dose.is_infusion
    model = pk.one_compartment("first_order")  # depot 1, central 2
    err = bad(edit(2, "1,0,.,100,1,2,-1,0,0,0,0,1,70"), 2, "RATE", "R2", compartments=model)
    assert "with_dose_modifiers({'central': ('R',)})" in str(err)
    read(
        edit(2, "1,0,.,100,1,2,-1,0,0,0,0,1,70"),
        compartments=model.with_dose_modifiers(central="R"),
    )
    bad(edit(2, "1,0,.,100,1,1,-1,2,0,0,0,1,70"), 2, "DUR", "both RATE")
    bad(edit(2, "1,0,.,0,1,1,-1,0,0,0,0,1,70"), 2, "AMT", "RATE -1 with AMT 0")


def test_non_contiguous_subject_and_field_count():
    bad(GOOD + "1,3,1.0,0,0,2,0,0,0,0,0,0,70\n", 7, "ID", "contiguous")
    bad(edit(3, "1,0.5,2.1,0,0,2"), 3, "RATE", "6 fields")


def test_all_problems_reported_at_once():
    text = edit(3, "1,0.5,abc,0,9,2,0,0,0,0,0,0,70")
    lines = text.splitlines()
    lines[4] = "2,0,.,-5,1,1,0,0,0,0,0,1,80"
    with pytest.raises(DatasetError) as info:
        read("\n".join(lines) + "\n")
    where = {(p.line, p.column) for p in info.value.problems}
    assert {(3, "DV"), (3, "EVID"), (5, "AMT")} <= where
    assert "header as line 1" in str(info.value)


def test_dataframe_line_convention():
    frame = pd.DataFrame({"ID": [1, 1], "TIME": [1.0, 0.0], "DV": [1.0, 2.0]})
    with pytest.raises(DatasetError, match="line 3, column TIME"):
        Dataset(frame)


def test_regimens_need_compartment_names():
    ds = read_nonmem(io.StringIO(GOOD))
    assert ds.subject(1).times.tolist() == [0.5, 2.0]
    with pytest.raises(DatasetError, match="compartments="):
        _ = ds.regimens


# ------------------------------------------------------------------ Dataset operations


def test_round_trip(tmp_path):
    text = f"""{HEADER},SEX,AGE
1,0,.,100,1,1,10,0,0,0,0,1,M,40.5
1,0.5,2.1,0,0,2,0,0,0,0,0,0,M,40.5
1,1,.,0,0,2,0,0,0,0,0,1,M,.
3,0,.,200,1,1,0,0,12,2,1,1,F,33
3,1.125,4.0,0,0,2,0,0,0,0,0,0,F,33
"""
    ds = read(text)
    f = tmp_path / "out.csv"
    ds.to_csv(f)
    back = read_nonmem(f, compartments=COMP)
    pd.testing.assert_frame_equal(back.data, ds.data)
    assert back.equals(ds)
    assert ds.to_csv() == f.read_text()
    assert ".," in f.read_text()  # missing values written as '.'
    assert [r.doses for r in back.regimens][1][0].ss == 1


def test_padded():
    ds = read(GOOD)
    p = ds.padded()
    assert p.times.shape == p.dv.shape == p.mask.shape == (2, 2)
    np.testing.assert_array_equal(p.times, [[0.5, 2.0], [1.0, 1.0]])
    np.testing.assert_array_equal(p.mask, [[True, True], [True, False]])
    np.testing.assert_array_equal(p.dv, [[2.1, 3.5], [4.0, 0.0]])
    assert len(p.regimens) == 2 and p.ids == [1, 2]
    p5 = ds.padded(max_obs=5)
    assert p5.times.shape == (2, 5)
    assert np.all(np.diff(p5.times, axis=1) >= 0)
    assert p5.mask.sum() == 3
    with pytest.raises(ValueError, match="max_obs"):
        ds.padded(max_obs=1)


def test_subset():
    ds = read(GOOD)
    sub = ds.subset([2])
    assert len(sub) == 1 and sub.ids == [2]
    assert sub.regimens[0].doses[0].amt == 200.0
    assert sub.lines.tolist() == [5, 6]
    assert sub.covariates.index.tolist() == [2]
    assert ds.subset([2, 1]).ids == [2, 1]
    with pytest.raises(KeyError):
        ds.subset([9])


# --------------------------------------------------------------------- shipped datasets


def test_theophylline():
    ds = datasets.theophylline()
    assert len(ds) == 12
    assert len(ds.data) == 144 and len(ds.observations) == 132
    assert ds.covariate_names == ["WT"]
    assert ds.covariates.loc[1, "WT"] == 79.6
    for sid, reg in zip(ds.ids, ds.regimens, strict=True):
        (d,) = reg.doses
        assert d.cmt == "depot" and d.time == 0.0
        assert 318 < d.amt < 321 or (sid == 9 and d.amt == 267.84)  # mg: Dose (mg/kg) x Wt
    # spot checks against R's Theoph
    assert ds.regimens[0].doses[0].amt == pytest.approx(4.02 * 79.6)
    obs = ds.observations.set_index(["ID", "TIME"])["DV"]
    assert obs[(1, 1.12)] == 10.5 and obs[(5, 1.0)] == 11.4 and obs[(12, 24.15)] == 1.17
    assert datasets.path("theophylline").exists()


def test_phenobarbital():
    ds = datasets.phenobarbital()
    assert len(ds) == 59 and len(ds.data) == 744
    assert len(ds.observations) == 155
    assert ds.covariate_names == ["WT", "APGAR"]
    assert ds.covariates.loc[1].tolist() == [1.4, 7.0]
    assert ds.covariates.loc[24].tolist() == [3.2, 2.0]
    assert all(d.cmt == "central" for r in ds.regimens for d in r.doses)
    assert sum(len(r.doses) for r in ds.regimens) == 589
    obs = ds.observations.set_index(["ID", "TIME"])["DV"]
    assert obs[(1, 2.0)] == 17.3 and obs[(50, 89.0)] == 67.9 and obs[(59, 146.8)] == 40.2
    assert ds.regimens[0].doses[0].amt == 25.0


def test_indomethacin():
    ds = datasets.indomethacin()
    assert len(ds) == 6 and len(ds.observations) == 66
    assert all(len(ds.subject(k).times) == 11 for k in ds.ids)
    assert all(r.doses[0].cmt == "central" and r.doses[0].amt == 25.0 for r in ds.regimens)
    obs = ds.observations.set_index(["ID", "TIME"])["DV"]
    assert obs[(1, 0.25)] == 1.5 and obs[(6, 8.0)] == 0.09
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.path("warfarin")


def test_shipped_round_trip():
    for load in (datasets.theophylline, datasets.phenobarbital, datasets.indomethacin):
        ds = load()
        text = ds.to_csv()
        assert text == datasets.path(ds.source).read_text()
        back = read_nonmem(io.StringIO(text), compartments=ds.compartments)
        assert back.equals(ds)


def test_theophylline_simulation_magnitude():
    ds = datasets.theophylline()
    s = ds.subject(1)
    model = pk.one_compartment(absorption="first_order")
    res = twinjax.simulate(model, {"CL": 2.8, "V": 32.0, "KA": 1.5}, s.regimen, s.times)
    c = np.asarray(res["C"]).ravel()
    assert c.shape == s.times.shape and np.all(np.isfinite(c))
    peak, observed = c.max(), np.nanmax(s.dv)
    assert 0.5 < peak / observed < 2.0
    # batched over all subjects with the padded arrays
    p = ds.padded()
    res = twinjax.simulate(model, {"CL": 2.8, "V": 32.0, "KA": 1.5}, p.regimens, p.times)
    c = np.asarray(res["C"])
    assert c.shape == p.times.shape
    ratio = c.max(axis=1) / p.dv.max(axis=1)
    assert np.all((ratio > 0.5) & (ratio < 2.0))
    assert isinstance(p.regimens[0], Regimen)


def test_covariate_selection_and_long_error_lists():
    text = GOOD.replace("WT", "WT,SITE").replace(",70\n", ",70,A\n").replace(",80\n", ",80,B\n")
    ds = read(text, covariates=["SITE"])
    assert ds.covariate_names == ["SITE"] and ds.covariates.loc[2, "SITE"] == "B"
    assert "WT" in ds.data.columns  # other columns are kept
    bad(GOOD, 1, "AGE", "'AGE' is not in the header", covariates=["AGE"])
    many = HEADER + "\n" + "".join(f"1,{t},x,0,0,2,0,0,0,0,0,0\n" for t in range(40))
    with pytest.raises(DatasetError) as info:
        read(many)
    assert len(info.value.problems) == 40
    assert "and 15 more" in str(info.value)
