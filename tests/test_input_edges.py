"""Input edge cases (issue #13): nothing lost, nothing silently wrong.

NONMEM files as they come from other tools (header only, Latin-1, UTF-16, old Mac line
endings), and parameter-bound messages that state the allowed range and the reason.
"""

import io
import math

import pandas as pd
import pytest

import twinjax as tj
from twinjax.data import DatasetError, read_nonmem
from twinjax.models import pk

ROWS = ["ID,TIME,DV,AMT,SITE", "1,0,.,100,Zürich", "1,1,5.0,0,Zürich", "2,0,.,200,Köln"]
COMP = {1: "central"}


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _check(ds):
    assert ds.ids == [1, 2]
    assert len(ds.data) == 3
    assert list(ds.covariates["SITE"]) == ["Zürich", "Köln"]


# ------------------------------------------------------------------ empty dataset
@pytest.mark.parametrize("text", ["ID,TIME,DV,AMT\n", "# only comments\nID TIME DV\n\n# end\n"])
def test_header_only_file_is_an_error_at_read_time(tmp_path, text):
    path = _write(tmp_path, "empty.csv", text.encode())
    with pytest.raises(DatasetError, match="no data records") as info:
        read_nonmem(path, COMP)
    assert str(path) in str(info.value)


def test_empty_dataframe_is_an_error_at_read_time():
    with pytest.raises(ValueError, match="no data records"):
        read_nonmem(pd.DataFrame({"ID": [], "TIME": [], "DV": []}), COMP)


def test_file_without_header_still_says_empty(tmp_path):
    with pytest.raises(DatasetError, match="empty"):
        read_nonmem(_write(tmp_path, "blank.csv", b"\n\n"), COMP)


# ------------------------------------------------------------------------ encodings
@pytest.mark.parametrize(
    "codec, bom",
    [
        ("utf-8", b""),
        ("utf-8", b"\xef\xbb\xbf"),
        ("utf-16-le", b"\xff\xfe"),
        ("utf-16-be", b"\xfe\xff"),
        ("utf-32-le", b"\xff\xfe\x00\x00"),
    ],
)
def test_unicode_files_with_or_without_bom(tmp_path, codec, bom):
    data = bom + ("\r\n".join(ROWS) + "\r\n").encode(codec)
    _check(read_nonmem(_write(tmp_path, "u.csv", data), COMP))
    _check(read_nonmem(io.BytesIO(data), COMP))


def test_latin1_file_is_a_clear_error_naming_line_and_byte(tmp_path):
    data = ("\n".join(ROWS) + "\n").encode("latin-1")
    path = _write(tmp_path, "latin1.csv", data)
    with pytest.raises(DatasetError) as info:
        read_nonmem(path, COMP)
    msg = str(info.value)
    offset = data.index(b"\xfc")
    assert str(path) in msg and "line 2" in msg and f"byte offset {offset}" in msg, msg
    assert "0xfc" in msg and 'encoding="latin-1"' in msg, msg
    assert info.value.problems[0].line == 2
    assert not isinstance(info.value, UnicodeDecodeError)


def test_latin1_file_reads_with_encoding_argument(tmp_path):
    data = ("\n".join(ROWS) + "\n").encode("latin-1")
    _check(read_nonmem(_write(tmp_path, "latin1.csv", data), COMP, encoding="latin-1"))
    _check(read_nonmem(io.BytesIO(data), COMP, encoding="cp1252"))


def test_utf16_without_bom_is_a_clear_error(tmp_path):
    data = ("\n".join(ROWS) + "\n").encode("utf-16-le")
    with pytest.raises(DatasetError, match="NUL byte.*UTF-16"):
        read_nonmem(_write(tmp_path, "u16.csv", data), COMP)
    _check(read_nonmem(_write(tmp_path, "u16.csv", data), COMP, encoding="utf-16-le"))


def test_unknown_encoding_is_a_clear_error(tmp_path):
    path = _write(tmp_path, "a.csv", ("\n".join(ROWS) + "\n").encode())
    with pytest.raises(LookupError, match="no-such-codec"):
        read_nonmem(path, COMP, encoding="no-such-codec")


# ---------------------------------------------------------------------- line endings
@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("sep", [",", " "])
def test_line_endings(tmp_path, eol, sep):
    text = eol.join(r.replace(",", sep) for r in ROWS) + eol
    _check(read_nonmem(_write(tmp_path, "eol.csv", text.encode()), COMP))
    _check(read_nonmem(io.BytesIO(text.encode()), COMP))
    _check(read_nonmem(io.StringIO(text, newline=""), COMP))


def test_line_numbers_survive_bare_cr(tmp_path):
    text = "\r".join(["# comment", *ROWS[:2], "1,x,5.0,0,Zürich"]) + "\r"
    with pytest.raises(DatasetError) as info:
        read_nonmem(io.StringIO(text, newline=""), COMP)
    assert [(p.line, p.column) for p in info.value.problems] == [(4, "TIME")]


# ------------------------------------------------------------------- bound messages
def test_value_below_a_closed_lower_bound():
    m = pk.one_compartment()
    q = m.param("V")
    assert (q.lower, q.upper, q.transform) == (0.0, 1e5, "log")
    with pytest.raises(ValueError) as info:
        m.check_bounds({"V": -3.0})
    msg = str(info.value)
    assert "'V' = -3.0 is outside its bounds [0, 100000] L: it must be >= 0" in msg, msg
    assert "positive" not in msg


def test_value_above_the_upper_bound_names_the_upper_bound():
    m = pk.one_compartment()
    with pytest.raises(ValueError) as info:
        m.check_bounds({"CL": 18031.0})
    msg = str(info.value)
    hi = m.param("CL").upper
    assert f"'CL' = 18031.0 is outside its bounds [0, {hi:g}] L/h: it must be <= {hi:g}" in msg
    assert "positive" not in msg and ">" not in msg.split(":")[-1]


def test_batch_message_names_the_patient():
    m = pk.one_compartment()
    with pytest.raises(ValueError, match=r"'CL' = -1.0 \(patient 1\) .*must be >= 0"):
        m.check_bounds({"CL": [1.0, -1.0, 2.0]})


@pytest.mark.parametrize(
    "q, text",
    [
        (tj.Param("k", 1.0, "1/h", 0.0, 10.0, "log"), "[0, 10]"),
        (tj.Param("k", 1.0, "1/h", 0.0, math.inf, "log"), "[0, inf)"),
        (tj.Param("k", 1.0, "1/h", 1e-7, 12345678.5, "log"), "[1e-07, 12345678.5]"),
        (tj.Param("f", 0.5, "1", 0.0, 1.0, "logit"), "[0, 1]"),
        (tj.Param("x", 0.5, "1"), "(-inf, inf)"),
        (tj.Param("x", 0.5, "1", -1.0, 2.5), "[-1, 2.5]"),
    ],
)
def test_interval_notation(q, text):
    assert q.interval() == text
    assert text in q.describe()


def test_model_check_admits_the_lower_bound_of_a_log_parameter():
    # the simulation check is the closed interval (a zero rate or conductance is a
    # valid model); only checks that take the log need a value above the lower bound
    m = pk.one_compartment()
    m.check_bounds({"CL": 0.0})
    with pytest.raises(ValueError, match=r"\(0, 100000\] L: it must be > 0"):
        tj.Param("V", 0.0, "L", 0.0, 1e5, "log")


def test_interval_and_reason_for_an_open_lower_bound():
    q = pk.one_compartment().param("V")
    assert q.interval() == "[0, 100000]"
    assert q.interval(open_lower=True) == "(0, 100000]"
    assert q.bound_error(0.0, open_lower=True) == (
        "is outside its bounds (0, 100000] L: it must be > 0"
    )
    assert q.bound_error(0.0) is None
    assert q.bound_error(5.0, open_lower=True) is None
    assert q.bound_error(2e5) == "is outside its bounds [0, 100000] L: it must be <= 100000"
    assert q.bound_error(math.nan) == "is outside its bounds [0, 100000] L: it is NaN"


def test_param_default_messages():
    with pytest.raises(ValueError, match=r"default 5.0 1/h is outside its bounds \[0, 1\]"):
        tj.Param("k", 5.0, "1/h", 0.0, 1.0)
    with pytest.raises(ValueError, match=r"default 0.0 1/h .*\(0, 1\].*must be > 0"):
        tj.Param("k", 0.0, "1/h", 0.0, 1.0, "log")
