"""NONMEM-format datasets as text: the standard columns, the :class:`Problem` and
:class:`DatasetError` every check reports with, decoding and parsing a file into a
table of strings, numbers from its cells, and writing a normalised table back as
CSV. The column conventions are in :mod:`._nonmem`."""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections.abc import Sequence
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


def show(v) -> str:
    return repr(v.strip()) if isinstance(v, str) else repr(v)


def fmt_num(x) -> str:
    """A number as NONMEM writes it: shortest round-trip decimal, no trailing ``.0``."""
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if np.isnan(x):
        return "."
    return np.format_float_positional(x, trim="-")


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
