"""Reading a NONMEM-format dataset into a :class:`~twinjax.data.Dataset`.

The entry point sits above both halves of the data layer: the parsing and checking
of records (``_nonmem.py``) and the dataset they build (``_dataset.py``), so that
neither imports the other's caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from ._dataset import Dataset
from ._nonmem import DatasetError, parse_text, read_source


def read_nonmem(
    path_or_buffer,
    compartments=None,
    covariates: Sequence[str] | None = None,
    *,
    units: Mapping[str, str] | None = None,
    encoding: str = "utf-8",
):
    """Read and validate a NONMEM-format dataset.

    Arguments:
        path_or_buffer: a path to a CSV file (comma- or whitespace-separated), a
            readable text buffer (e.g. ``io.StringIO``), or a pandas DataFrame (which is
            copied, never modified). Columns ``ID, TIME, DV`` are required;
            ``AMT, EVID, CMT, RATE, DUR, II, ADDL, SS, MDV`` are optional and take NONMEM's
            defaults (see :mod:`twinjax.data`); names of standard columns are matched
            case-insensitively. Missing values are written ``.`` (empty and ``NA`` also
            read as missing). Blank lines and lines starting with ``#`` are skipped. Lines
            may end with ``\\n``, ``\\r\\n`` or ``\\r``.
        compartments: names for the CMT column, e.g. ``{1: "depot", 2: "central"}``; or a
            list of names (CMT may then hold the names themselves, or numbers k meaning
            the k-th name); or a :class:`twinjax.Model` (its ``state_names`` in order,
            numbered from 1 as NONMEM numbers compartments). A dose record without CMT
            (or CMT 0) goes to compartment 1. Without ``compartments`` the file's CMT
            names are used as given, and numeric CMTs leave the regimens unavailable.
        covariates: the covariate columns; default: every non-standard column. A
            covariate may change within a subject (time-varying covariates): every
            record's value is kept (see ``Dataset.time_varying`` and
            ``Dataset.piecewise``).
        units: optional units of the columns, e.g. ``{"TIME": "h", "AMT": "mg"}``,
            stored on the dataset for display.
        encoding: the text encoding of a file or binary buffer (a text buffer is already
            decoded). A byte-order mark, if the file starts with one, overrides it: UTF-8,
            UTF-16 and UTF-32 files with a mark are read whatever ``encoding`` says. Bytes
            that are not valid in ``encoding`` are an error naming the line and byte
            offset, never guessed at: a Latin-1 or Windows-1252 file (as Excel or SAS on
            Windows write them) needs ``encoding="latin-1"`` or ``"cp1252"``, and UTF-16
            without a mark ``encoding="utf-16-le"``.

    Returns:
        A :class:`twinjax.data.Dataset`.

    Raises:
        DatasetError: listing every problem found, each with its line number (the
            header being line 1) and column: missing required columns, values that are
            not numbers, time going backwards within a subject, doses to unknown
            compartments, negative amounts, MDV 1 with a DV (other than ``.`` or 0),
            duplicated records, EVID outside 0-4, both RATE and DUR, ADDL without II,
            RATE -1/-2 into a compartment whose model (given as
            ``compartments``) has no ``Rn``/``Dn`` parameter, and unsupported NONMEM
            features (SS 3, negative CMT; see ``docs/nonmem.md``); a dataset
            without data records (a header only); bytes not valid in ``encoding``.
        FileNotFoundError: the path does not exist.
        LookupError: ``encoding`` is not a known codec.
        TypeError: ``path_or_buffer`` or ``compartments`` is of the wrong kind.
    """
    if isinstance(path_or_buffer, pd.DataFrame):
        if len(path_or_buffer) == 0:
            raise DatasetError(
                f"<DataFrame>: the NONMEM dataset has columns {list(path_or_buffer.columns)} "
                "but no data records"
            )
        return Dataset(path_or_buffer, compartments, covariates, units=units)
    text, source = read_source(path_or_buffer, encoding)
    table, lines, header_line, problems = parse_text(text, source)
    return Dataset._from_table(
        table,
        lines,
        compartments,
        covariates,
        source=source,
        problems=problems,
        header_line=header_line,
        units=units,
    )
