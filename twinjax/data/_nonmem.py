"""NONMEM-format datasets: parse, validate, normalise and write.

A NONMEM dataset is a table with one record (row) per event: observations
(``EVID 0``), doses (``EVID 1``), other events (``EVID 2``), resets (``EVID 3``) and
reset-and-dose records (``EVID 4``). The standard columns, and their values when
the column is absent or the value missing (``.``):

- ``ID``: subject identifier (numeric). Required.
- ``TIME``: time of the record (h for twinjax PK models). Required.
- ``DV``: dependent variable (the observed value). Required column; ``.`` = missing.
- ``AMT``: dose amount. Default 0.
- ``EVID``: event identifier 0-4. Default 1 if ``AMT > 0``, else 0.
- ``CMT``: compartment, a number or a name. Default 0 (a dose then goes to
  compartment 1).
- ``RATE``, ``DUR``: infusion rate or duration. Default 0 (a bolus). RATE -1 / -2:
  the rate / duration is the dosed compartment's ``Rn`` / ``Dn`` model parameter (see
  ``Model.with_dose_modifiers``).
- ``II``, ``ADDL``: interdose interval, number of additional doses. Default 0.
- ``SS``: steady-state flag, 0, 1 or 2 (see ``docs/nonmem.md``). Default 0.
- ``MDV``: missing dependent variable, 0 or 1. Default 0 on observation records (EVID
  0) with a DV, else 1.

Any other column is a covariate (or an extra column kept as is).

Line numbers: every problem is reported with the 1-based line of the file it
was found on, counting the header as line 1 (so the first data record of a file
without comment lines is line 2). For a pandas DataFrame given instead of a
file, row ``i`` (0-based position) is reported as line ``i + 2``: the line it
would have in a CSV file written with a header.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

STANDARD = ("ID", "TIME", "DV", "AMT", "EVID", "CMT", "RATE", "DUR", "II", "ADDL", "SS", "MDV")
REQUIRED = ("ID", "TIME", "DV")
INT_COLUMNS = ("EVID", "ADDL", "SS", "MDV")
#: Tokens read as a missing value (NONMEM writes ``.``).
MISSING_TOKENS = frozenset({"", ".", "NA", "NaN", "nan"})
#: How many problems a :class:`DatasetError` message lists.
MAX_SHOWN = 25

LINE_CONVENTION = "line numbers count the header as line 1"
FRAME_CONVENTION = "DataFrame row i (0-based) is reported as line i + 2, as in a CSV with a header"


class Problem(NamedTuple):
    """One problem found in a dataset: where (``line``, ``column``) and what."""

    line: int
    column: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"


class DatasetError(ValueError):
    """A NONMEM dataset that cannot be used, with every problem found.

    Arguments:
        message: the error message.
        problems: the individual :class:`Problem` s (line, column, message), if any.

    The message lists the first problems (at most ``MAX_SHOWN``); all of them are in
    :attr:`problems`.
    """

    def __init__(self, message: str, problems: Sequence[Problem] = ()):
        super().__init__(message)
        self.problems: list[Problem] = list(problems)

    @classmethod
    def from_problems(
        cls, problems: Sequence[Problem], source: str, convention: str = LINE_CONVENTION
    ) -> DatasetError:
        """Build the error for ``problems`` found in ``source``."""
        order = {c: i for i, c in enumerate(STANDARD)}
        problems = sorted(problems, key=lambda p: (p.line, order.get(p.column, len(order))))
        n = len(problems)
        head = f"{source}: {n} problem{'s' if n != 1 else ''} in the NONMEM dataset ({convention}):"
        lines = [f"  {p}" for p in problems[:MAX_SHOWN]]
        if n > MAX_SHOWN:
            lines.append(f"  ... and {n - MAX_SHOWN} more (all are in DatasetError.problems)")
        return cls("\n".join([head, *lines]), problems)


# ----------------------------------------------------------------------------- parsing


#: Byte-order marks, longest first (a UTF-32-LE mark begins with the UTF-16-LE one).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _line_of(data: bytes, offset: int) -> int:
    """The 1-based line of byte ``offset`` in ``data`` (``\\n``, ``\\r\\n`` or ``\\r`` endings)."""
    return len(re.split(rb"\r\n|\r|\n", data[:offset]))


def decode(data: bytes, source: str, encoding: str = "utf-8") -> str:
    """Decode the bytes of a NONMEM file.

    A byte-order mark (UTF-8, UTF-16 or UTF-32) decides the encoding and is dropped;
    otherwise ``encoding`` is used.

    Raises:
        DatasetError: bytes that are not valid in the encoding (naming the line, the byte
            offset and the byte, and suggesting ``encoding="latin-1"``), or NUL bytes in a
            file not read as UTF-16/32 (UTF-16 without a byte-order mark).
        LookupError: ``encoding`` is not a known codec.
    """
    codecs.lookup(encoding)  # an unknown codec name fails here, whatever the file holds
    codec = next((c for bom, c in _BOMS if data.startswith(bom)), encoding)
    if b"\x00" in data and not codecs.lookup(codec).name.startswith(("utf-16", "utf-32")):
        offset = data.index(b"\x00")
        line = _line_of(data, offset)
        what = f"NUL byte at byte offset {offset}"
        hint = (
            "the file looks like UTF-16 without a byte-order mark: read it with "
            'read_nonmem(..., encoding="utf-16-le") (or "utf-16-be")'
        )
        raise DatasetError(
            f"{source}: line {line}: {what}; {hint}", [Problem(line, "(encoding)", what)]
        )
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as e:
        line = _line_of(data, e.start)
        what = (
            f"byte 0x{data[e.start]:02x} at byte offset {e.start} is not valid {e.encoding} "
            f"({e.reason})"
        )
        hint = (
            "if the file is Latin-1 or Windows-1252 (e.g. written by Excel or SAS), read it "
            'with read_nonmem(..., encoding="latin-1") or encoding="cp1252"'
        )
        raise DatasetError(
            f"{source}: line {line}: {what}; {hint}", [Problem(line, "(encoding)", what)]
        ) from None
    return text


def read_source(source, encoding: str = "utf-8") -> tuple[str, str]:
    """The text of ``source`` (a path or a readable text/binary buffer) and a display name.

    Bytes (a file, a binary buffer) are decoded by :func:`decode`; a text buffer is taken
    as it is (``encoding`` is not used).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"NONMEM dataset {str(path)!r} does not exist")
        return decode(path.read_bytes(), str(path), encoding), str(path)
    if hasattr(source, "read"):
        text = source.read()
        name = getattr(source, "name", None)
        name = str(name) if isinstance(name, (str, os.PathLike)) else "<buffer>"
        if isinstance(text, bytes):
            text = decode(text, name, encoding)
        return text, name
    raise TypeError(
        "read_nonmem expects a path, a readable buffer or a pandas DataFrame; got "
        f"{type(source).__name__}"
    )


def _is_skipped(fields: list[str]) -> bool:
    return all(not f.strip() for f in fields) or fields[0].lstrip().startswith("#")


def parse_text(text: str, source: str) -> tuple[pd.DataFrame, np.ndarray, int, list[Problem]]:
    """Split CSV (or whitespace-separated) text into a table of strings.

    Lines end with ``\\n``, ``\\r\\n`` or ``\\r`` (old Mac files). Blank lines and lines
    whose first field starts with ``#`` are skipped. The header is the first other line;
    it is comma-separated CSV if it contains a comma, else whitespace-separated.

    Returns:
        ``(table, lines, header_line, problems)``: the fields as an object DataFrame
        with the header's column names, the 1-based file line of every row, the line of
        the header, and the rows whose number of fields differs from the header's
        (padded or cut to fit).

    Raises:
        DatasetError: no header, an empty or duplicated column name, no data records.
    """
    # one line ending, and only it splits lines (not the other breaks str.splitlines knows)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    raw_lines = text.split("\n")
    header_idx = next(
        (i for i, ln in enumerate(raw_lines) if ln.strip() and not ln.lstrip().startswith("#")),
        None,
    )
    if header_idx is None:
        raise DatasetError(f"{source}: the NONMEM dataset is empty (no header line)")
    comma = "," in raw_lines[header_idx]
    if comma:
        reader = csv.reader(io.StringIO(text))
        records = ((reader.line_num, [f.strip() for f in row]) for row in reader)
    else:
        records = (
            (i + 1, [f for f in re.split(r"[\s,]+", ln.strip()) if f])
            for i, ln in enumerate(raw_lines)
        )
    header: list[str] | None = None
    header_line = 0
    rows: list[list[str]] = []
    lines: list[int] = []
    problems: list[Problem] = []
    for line_no, fields in records:
        if not fields or _is_skipped(fields):
            continue
        if header is None:
            header, header_line = fields, line_no
            continue
        if len(fields) != len(header):
            col = header[len(fields)] if len(fields) < len(header) else "(extra)"
            problems.append(
                Problem(
                    line_no,
                    col,
                    f"the record has {len(fields)} fields but the header (line {header_line}) "
                    f"has {len(header)}",
                )
            )
            fields = (fields + [""] * len(header))[: len(header)]
        rows.append(fields)
        lines.append(line_no)
    assert header is not None
    check_header(header, source, header_line)
    if not rows:
        raise DatasetError(
            f"{source}: the NONMEM dataset has a header (line {header_line}) but no data records",
            [Problem(header_line, "(file)", "no data records after the header")],
        )
    table = pd.DataFrame(rows, columns=header, dtype=object)
    return table, np.asarray(lines, dtype=np.int64), header_line, problems


def check_header(columns: Sequence[Any], source: str, header_line: int = 1) -> None:
    """Raise :class:`DatasetError` for empty or duplicated column names."""
    problems = []
    seen: dict[str, str] = {}
    for c in columns:
        name = str(c).strip()
        if not name:
            problems.append(Problem(header_line, "(unnamed)", "empty column name in the header"))
            continue
        key = name.upper() if name.upper() in STANDARD else name
        if key in seen:
            problems.append(
                Problem(header_line, name, f"column {name!r} appears twice (also {seen[key]!r})")
            )
        seen[key] = name
    if problems:
        raise DatasetError.from_problems(problems, source)


# ------------------------------------------------------------------------ value parsing


def missing_mask(s: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s.isna().to_numpy()
    return np.array(
        [
            v is None
            or (isinstance(v, float) and np.isnan(v))
            or v is pd.NA
            or (isinstance(v, str) and v.strip() in MISSING_TOKENS)
            for v in s.astype(object)
        ],
        dtype=bool,
    )


def parse_numeric(s: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a column of numbers.

    Returns:
        ``(values, missing, bad)``: float64 values (NaN where missing or bad), the
        missing mask (``.``, empty, NA) and the mask of values that are not finite numbers.
    """
    missing = missing_mask(s)
    if pd.api.types.is_bool_dtype(s.dtype):
        vals = s.astype(float).to_numpy()
    elif pd.api.types.is_numeric_dtype(s.dtype):
        vals = s.to_numpy(dtype=float, na_value=np.nan)
    else:
        obj = s.astype(object).to_numpy()
        cleaned = [
            np.nan if m else (v.strip() if isinstance(v, str) else v)
            for v, m in zip(obj, missing, strict=True)
        ]
        vals = pd.to_numeric(pd.Series(cleaned, dtype=object), errors="coerce").to_numpy(
            dtype=float, na_value=np.nan
        )
    bad = ~missing & ~np.isfinite(vals)
    vals = np.where(missing | bad, np.nan, vals)
    return vals, missing, bad


def _show(v) -> str:
    return repr(v.strip()) if isinstance(v, str) else repr(v)


def fmt_num(x) -> str:
    """A number as NONMEM writes it: shortest round-trip decimal, no trailing ``.0``."""
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if np.isnan(x):
        return "."
    return np.format_float_positional(x, trim="-")


# ------------------------------------------------------------------------ compartments


class Compartments(NamedTuple):
    """The resolved ``compartments`` argument: CMT number -> name, and the valid names."""

    by_number: dict[int, str] | None
    names: list[str] | None
    given: Any
    #: ``{compartment: (F, lag, R, D)}`` parameter names when a Model was given
    dose_params: dict | None = None

    def describe(self) -> str:
        if self.by_number:
            return ", ".join(f"{k} ({v})" for k, v in sorted(self.by_number.items()))
        return ", ".join(repr(n) for n in self.names or [])


def resolve_compartments(compartments) -> Compartments:
    """Normalise ``compartments`` (None, a mapping number -> name, a list of names, a Model).

    Raises:
        TypeError, ValueError: for a malformed argument.
    """
    if compartments is None:
        return Compartments(None, None, None)
    if hasattr(compartments, "state_names"):
        names = [str(n) for n in compartments.state_names]
        dose_params = None
        if hasattr(compartments, "dose_parameters"):
            from ..model._model import dose_table

            dose_params = dose_table(compartments)
        return Compartments({i + 1: n for i, n in enumerate(names)}, names, names, dose_params)
    if isinstance(compartments, Mapping):
        by_number = {}
        for k, v in compartments.items():
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise TypeError(f"compartments keys must be CMT numbers (integers >= 1); got {k!r}")
            if not isinstance(v, str) or not v:
                raise TypeError(f"compartments[{k}] must be a compartment name; got {v!r}")
            by_number[int(k)] = v
        if not by_number:
            raise ValueError("compartments is empty")
        return Compartments(by_number, list(dict.fromkeys(by_number.values())), dict(by_number))
    if isinstance(compartments, Sequence) and not isinstance(compartments, str):
        names = list(compartments)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise TypeError(f"compartments must be a non-empty list of names; got {compartments!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"compartments has repeated names: {names}")
        return Compartments({i + 1: n for i, n in enumerate(names)}, names, list(names))
    raise TypeError(
        "compartments must be a mapping {CMT number: name}, a list of names or a Model; got "
        f"{type(compartments).__name__}"
    )


# ------------------------------------------------------------------------ normalisation


class Normalized(NamedTuple):
    """The result of :func:`normalize`."""

    frame: pd.DataFrame
    cmt_names: np.ndarray | None  # per record: the dosed compartment name (or None)
    covariates: list[str]
    unresolved: str | None  # why dose compartments could not be named, if so


def normalize(
    table: pd.DataFrame,
    lines: np.ndarray,
    compartments: Compartments,
    covariates: Sequence[str] | None,
    source: str,
    *,
    problems: list[Problem] | None = None,
    header_line: int = 1,
    convention: str = LINE_CONVENTION,
) -> Normalized:
    """Validate a raw table and give it the standard columns, types and defaults.

    Arguments:
        table: the records; values may be strings (as read from a file) or numbers.
        lines: the 1-based file line of every record (for messages).
        compartments: the resolved compartment map.
        covariates: the covariate columns (None: every non-standard column).
        source: the dataset's name, for messages.
        problems: problems already found (e.g. by the parser); added to.
        header_line: the line of the header (for problems with columns).
        convention: how line numbers are counted, for the message.

    Returns:
        A :class:`Normalized` with a new DataFrame (the input is not modified) with the
        columns ``STANDARD`` then the other columns, in order.

    Raises:
        DatasetError: listing every problem found, each with its line and column.
    """
    problems = list(problems or [])
    n = len(table)
    lines = np.asarray(lines, dtype=np.int64)

    def fail(mask, column, message) -> None:
        for i in np.flatnonzero(mask):
            problems.append(Problem(int(lines[i]), column, message(i)))

    # -- columns
    check_header(list(table.columns), source, header_line)
    rename, extra = {}, []
    for c in table.columns:
        name = str(c).strip()
        if name.upper() in STANDARD:
            rename[c] = name.upper()
        else:
            rename[c] = name
            extra.append(name)
    raw = table.rename(columns=rename)
    missing_cols = [c for c in REQUIRED if c not in raw.columns]
    if missing_cols:
        for c in missing_cols:
            problems.append(
                Problem(
                    header_line,
                    c,
                    f"required column {c} is missing from the header; columns are "
                    f"{list(raw.columns)}",
                )
            )
        raise DatasetError.from_problems(problems, source, convention)
    if covariates is None:
        cov_names = list(extra)
    else:
        if isinstance(covariates, str):
            covariates = [covariates]
        cov_names = []
        for c in covariates:
            if c in STANDARD:
                problems.append(
                    Problem(header_line, c, f"{c} is a standard NONMEM column, not a covariate")
                )
            elif c not in raw.columns:
                problems.append(
                    Problem(
                        header_line,
                        c,
                        f"covariate column {c!r} is not in the header; other columns are {extra}",
                    )
                )
            else:
                cov_names.append(c)

    def col(name):
        return raw[name] if name in raw.columns else None

    def numeric(name, default=None):
        s = col(name)
        if s is None:
            return np.full(n, np.nan if default is None else default, float), np.ones(n, bool)
        vals, miss, bad = parse_numeric(s)
        obj = s.astype(object).to_numpy()
        fail(bad, name, lambda i: f"{_show(obj[i])} is not a number")
        if default is not None:
            vals = np.where(miss, default, vals)
        return vals, miss

    ids, id_miss = numeric("ID")
    fail(id_miss, "ID", lambda i: "ID is missing")
    time, time_miss = numeric("TIME")
    fail(time_miss, "TIME", lambda i: "TIME is missing")
    fail(time < 0, "TIME", lambda i: f"TIME {fmt_num(time[i])} is negative")
    dv, dv_miss = numeric("DV")
    amt, _ = numeric("AMT", 0.0)
    fail(amt < 0, "AMT", lambda i: f"negative dose amount AMT {fmt_num(amt[i])}")
    rate, _ = numeric("RATE", 0.0)
    dur, _ = numeric("DUR", 0.0)
    ii, _ = numeric("II", 0.0)
    addl, _ = numeric("ADDL", 0.0)
    ss, _ = numeric("SS", 0.0)
    evid, evid_miss = numeric("EVID")
    mdv, mdv_miss = numeric("MDV")
    has_mdv = col("MDV") is not None

    # EVID: given, or inferred from AMT (a record with AMT > 0 is a dose)
    evid = np.where(evid_miss, np.where(amt > 0, 1.0, 0.0), evid)
    bad_evid = np.isfinite(evid) & ~np.isin(evid, [0, 1, 2, 3, 4])
    fail(bad_evid, "EVID", lambda i: f"EVID {fmt_num(evid[i])} is not one of 0, 1, 2, 3, 4")
    evid = np.where(bad_evid, np.nan, evid)
    is_obs = evid == 0
    is_dose = np.isin(evid, [1, 4])

    # MDV: given, or 1 unless an observation record with a DV
    mdv = np.where(mdv_miss, np.where(is_obs & ~dv_miss, 0.0, 1.0), mdv)
    bad_mdv = np.isfinite(mdv) & ~np.isin(mdv, [0, 1])
    fail(bad_mdv, "MDV", lambda i: f"MDV {fmt_num(mdv[i])} is not 0 or 1")
    mdv = np.where(bad_mdv, np.nan, mdv)
    if has_mdv:
        fail(
            (mdv == 0) & np.isfinite(evid) & ~is_obs,
            "MDV",
            lambda i: (
                f"MDV 0 on a record with EVID {int(evid[i])}; only observation records "
                "(EVID 0) may have MDV 0"
            ),
        )
    fail(
        is_obs & (mdv == 0) & dv_miss,
        "DV",
        lambda i: "an observation record (EVID 0, MDV 0) has no DV; give the value or set MDV 1",
    )
    fail(
        (mdv == 1) & np.isfinite(dv) & (dv != 0),
        "DV",
        lambda i: (
            f"MDV is 1 but DV is {fmt_num(dv[i])}; a record without an observation must "
            "have DV '.' (missing) or 0"
        ),
    )
    fail(
        (amt > 0) & np.isin(evid, [0, 2, 3]),
        "AMT",
        lambda i: (
            f"AMT {fmt_num(amt[i])} on a record with EVID {int(evid[i])}; doses need "
            "EVID 1 (or 4 to reset and dose)"
        ),
    )

    # infusions (RATE -1 / -2: rate / duration modelled by the compartment's R / D)
    modelled = np.isin(rate, [-1, -2])
    fail(
        (rate < 0) & ~modelled,
        "RATE",
        lambda i: (
            f"negative RATE {fmt_num(rate[i])}; RATE is >= 0, -1 (rate modelled by Rn) or "
            "-2 (duration modelled by Dn)"
        ),
    )
    fail(dur < 0, "DUR", lambda i: f"negative DUR {fmt_num(dur[i])}")
    fail(
        (rate != 0) & np.isfinite(rate) & (dur > 0),
        "DUR",
        lambda i: (
            f"both RATE ({fmt_num(rate[i])}) and DUR ({fmt_num(dur[i])}) are given; an "
            "infusion takes one of them"
        ),
    )
    fail(
        is_dose & modelled & (amt == 0),
        "AMT",
        lambda i: (
            f"RATE {int(rate[i])} with AMT 0: a modelled-rate or -duration dose needs AMT > 0"
        ),
    )
    # repeats and steady state
    fail(ii < 0, "II", lambda i: f"negative II {fmt_num(ii[i])}")
    bad_addl = np.isfinite(addl) & ((addl < 0) | (addl != np.round(addl)))
    fail(bad_addl, "ADDL", lambda i: f"ADDL {fmt_num(addl[i])} is not a whole number >= 0")
    addl = np.where(bad_addl, np.nan, addl)
    fail(
        (addl > 0) & ~(ii > 0),
        "II",
        lambda i: (
            f"ADDL is {int(addl[i])} but II is {fmt_num(ii[i])}; additional doses need "
            "an interdose interval II > 0"
        ),
    )
    bad_ss = np.isfinite(ss) & ~np.isin(ss, [0, 1, 2])
    fail(
        bad_ss,
        "SS",
        lambda i: f"SS {fmt_num(ss[i])} is not supported; SS is 0, 1 or 2",
    )
    ss = np.where(bad_ss, np.nan, ss)
    # a steady-state constant infusion: SS 1/2, AMT 0, RATE > 0, II 0
    ss_const = (ss > 0) & (amt == 0) & (rate > 0) & (ii == 0) & ~(dur > 0)
    fail(
        (ss > 0) & ~(ii > 0) & ~ss_const,
        "II",
        lambda i: (
            f"SS is {int(ss[i])} but II is {fmt_num(ii[i])}; a steady-state dose needs II > 0 "
            "(or AMT 0, RATE > 0 and II 0 for a steady-state constant infusion)"
        ),
    )
    fail(
        ss_const & (addl > 0),
        "ADDL",
        lambda i: "a steady-state constant infusion (AMT 0, RATE > 0, II 0) cannot have ADDL",
    )
    fail(
        is_dose & (rate > 0) & (amt == 0) & ~ss_const,
        "AMT",
        lambda i: (
            f"RATE {fmt_num(rate[i])} with AMT 0: an infusion needs AMT > 0 unless it is a "
            "steady-state constant infusion (SS 1 or 2, II 0)"
        ),
    )

    # compartments
    cmt_col = col("CMT")
    cmt_vals: list[Any] = [0] * n
    cmt_names: list[str | None] = [None] * n
    unresolved = None
    if cmt_col is not None:
        obj = cmt_col.astype(object).to_numpy()
        nums, miss, bad = parse_numeric(cmt_col)
        for i in range(n):
            if miss[i]:
                continue
            if not bad[i]:
                v = nums[i]
                if v != round(v):
                    problems.append(
                        Problem(int(lines[i]), "CMT", f"CMT {fmt_num(v)} is not a whole number")
                    )
                    continue
                cmt_vals[i] = int(v)
            elif isinstance(obj[i], str) and obj[i].strip() and not _looks_numeric(obj[i]):
                cmt_vals[i] = obj[i].strip()
            else:
                problems.append(Problem(int(lines[i]), "CMT", f"{_show(obj[i])} is not a number"))
    for i in range(n):
        v = cmt_vals[i]
        record_needs = is_dose[i] or (is_obs[i] and v != 0)
        if not record_needs:
            continue
        where = "dose" if is_dose[i] else "observation"
        if isinstance(v, str):
            if compartments.names is not None and v not in compartments.names:
                problems.append(
                    Problem(
                        int(lines[i]),
                        "CMT",
                        f"{where} in unknown compartment {v!r}; valid compartments are "
                        f"{compartments.describe()}",
                    )
                )
            cmt_names[i] = v
        elif v < 0:
            problems.append(
                Problem(
                    int(lines[i]),
                    "CMT",
                    f"CMT {v} (a negative CMT turns a compartment off) is not supported",
                )
            )
        elif compartments.by_number is None:
            unresolved = (
                "the dataset gives compartments as CMT numbers (or not at all); pass "
                "compartments={1: 'depot', 2: 'central'} (or a list of names, or the Model) to "
                "read_nonmem to name them"
            )
        else:
            key = v if v != 0 else 1
            cmt_name = compartments.by_number.get(key)
            if cmt_name is None:
                what = (
                    f"{where} in unknown compartment CMT {v}"
                    if v != 0
                    else f"{where} without CMT and there is no compartment 1 to default to"
                )
                problems.append(
                    Problem(
                        int(lines[i]),
                        "CMT",
                        f"{what}; valid compartments are {compartments.describe()}",
                    )
                )
            cmt_names[i] = cmt_name
        # RATE -1 / -2 into a compartment of the given Model without R / D
        name_i = cmt_names[i]
        if (
            is_dose[i]
            and modelled[i]
            and compartments.dose_params is not None
            and name_i is not None
            and name_i in (compartments.names or [])
        ):
            slot, kind = (2, "R") if rate[i] == -1 else (3, "D")
            if compartments.dose_params.get(name_i, (None,) * 4)[slot] is None:
                num = compartments.names.index(name_i) + 1  # type: ignore[union-attr]
                what = "rate" if kind == "R" else "duration"
                problems.append(
                    Problem(
                        int(lines[i]),
                        "RATE",
                        f"RATE {int(rate[i])} (infusion {what} modelled by {kind}{num}) into "
                        f"compartment {num} ({name_i!r}), which has no {kind} parameter in the "
                        f"model; declare it with model.with_dose_modifiers({{{name_i!r}: "
                        f"({kind!r},)}})",
                    )
                )

    # per-subject structure: contiguity, time order
    first_line: dict[float, int] = {}
    prev_id = None
    prev_i = None
    for i in range(n):
        sid = ids[i]
        if not np.isfinite(sid):
            prev_i = None
            continue
        if sid != prev_id:
            if sid in first_line:
                problems.append(
                    Problem(
                        int(lines[i]),
                        "ID",
                        f"ID {fmt_num(sid)} appears again after other subjects (its records "
                        f"start at line {first_line[sid]}); the records of a subject must be "
                        "contiguous",
                    )
                )
            else:
                first_line[sid] = int(lines[i])
            prev_id, prev_i = sid, None
        if np.isfinite(time[i]):
            if prev_i is not None and time[i] < time[prev_i]:
                problems.append(
                    Problem(
                        int(lines[i]),
                        "TIME",
                        f"time goes backwards for ID {fmt_num(sid)}: TIME {fmt_num(time[i])} "
                        f"after {fmt_num(time[prev_i])} (line {lines[prev_i]}); times must be "
                        "non-decreasing within a subject",
                    )
                )
            else:
                prev_i = i

    # extra columns: numbers when every value is one, else text
    extras: dict[str, pd.Series] = {}
    for c in extra:
        s = raw[c]
        vals, miss, bad = parse_numeric(s)
        if bad.any():
            obj = s.astype(object).to_numpy()
            extras[c] = pd.Series(
                [
                    np.nan if m else (v.strip() if isinstance(v, str) else v)
                    for v, m in zip(obj, miss, strict=True)
                ],
                dtype=object,
            )
        else:
            extras[c] = pd.Series(vals, dtype=float)

    # covariates may change within a subject (time-varying covariates): every record's
    # value is kept; Dataset.time_varying names them, Dataset.piecewise applies them
    # piecewise constant in time, and Dataset.covariates holds the baseline values

    # duplicated records (identical in every column)
    columns_now = {
        "ID": ids,
        "TIME": time,
        "DV": dv,
        "AMT": amt,
        "EVID": evid,
        "CMT": cmt_vals,
        "RATE": rate,
        "DUR": dur,
        "II": ii,
        "ADDL": addl,
        "SS": ss,
        "MDV": mdv,
    }
    seen_rows: dict[tuple, int] = {}
    for i in range(n):
        key = tuple(_key(columns_now[c][i]) for c in STANDARD) + tuple(
            _key(extras[c].iat[i]) for c in extra
        )
        if key in seen_rows:
            problems.append(
                Problem(
                    int(lines[i]),
                    "ID/TIME",
                    f"duplicated record: identical in every column to line {seen_rows[key]} "
                    f"(ID {fmt_num(ids[i])}, TIME {fmt_num(time[i])})",
                )
            )
        else:
            seen_rows[key] = int(lines[i])

    if problems:
        raise DatasetError.from_problems(problems, source, convention)

    frame = pd.DataFrame(
        {
            "ID": _as_int_if_whole(ids),
            "TIME": time,
            "DV": dv,
            "AMT": amt,
            "EVID": evid.astype(np.int64),
            "CMT": _cmt_series(cmt_vals),
            "RATE": rate,
            "DUR": dur,
            "II": ii,
            "ADDL": addl.astype(np.int64),
            "SS": ss.astype(np.int64),
            "MDV": mdv.astype(np.int64),
            **{c: extras[c].to_numpy() for c in extra},
        }
    )
    names = None if unresolved else np.array(cmt_names, dtype=object)
    return Normalized(frame, names, cov_names, unresolved)


def _show_value(v) -> str:
    if isinstance(v, (float, np.floating)) and np.isnan(v):
        return "."
    if isinstance(v, (int, float, np.integer, np.floating)):
        return fmt_num(v)
    return repr(v)


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _key(v):
    if isinstance(v, (float, np.floating)) and np.isnan(v):
        return ("nan",)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    return v


def _as_int_if_whole(x: np.ndarray) -> np.ndarray:
    if len(x) and np.all(x == np.round(x)) and np.all(np.abs(x) < 2**53):
        return x.astype(np.int64)
    return x if len(x) else x.astype(np.int64)


def _cmt_series(vals: list) -> pd.Series:
    if all(isinstance(v, int) for v in vals):
        return pd.Series(vals, dtype=np.int64)
    return pd.Series(vals, dtype=object)


# ------------------------------------------------------------------------------ writing


def format_frame(frame: pd.DataFrame) -> str:
    """A normalised dataset as NONMEM CSV text (missing values as ``.``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([str(c) for c in frame.columns])
    cols = []
    for c in frame.columns:
        s = frame[c]
        if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
            cols.append([fmt_num(v) for v in s.to_numpy()])
        else:
            cols.append(
                [
                    "."
                    if v is None or (isinstance(v, float) and np.isnan(v))
                    else fmt_num(v)
                    if isinstance(v, (int, float, np.integer, np.floating))
                    else str(v)
                    for v in s.astype(object).to_numpy()
                ]
            )
    writer.writerows(zip(*cols, strict=True))
    return out.getvalue()
