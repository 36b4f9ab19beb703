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

Layout: the columns, :class:`Problem`, :class:`DatasetError`, parsing and writing are in
``_nonmem_parse.py``; the checks of the records (a table of rules for single records,
then compartments, subjects and duplicates) and the compartment map in
``_nonmem_rules.py``; this module normalises a table with them (:func:`normalize`) and
re-exports the names the rest of :mod:`twinjax.data` uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from ._nonmem_parse import FRAME_CONVENTION as FRAME_CONVENTION
from ._nonmem_parse import INT_COLUMNS as INT_COLUMNS
from ._nonmem_parse import LINE_CONVENTION as LINE_CONVENTION
from ._nonmem_parse import MAX_SHOWN as MAX_SHOWN
from ._nonmem_parse import MISSING_TOKENS as MISSING_TOKENS
from ._nonmem_parse import REQUIRED as REQUIRED
from ._nonmem_parse import STANDARD as STANDARD
from ._nonmem_parse import DatasetError as DatasetError
from ._nonmem_parse import Problem as Problem
from ._nonmem_parse import check_header as check_header
from ._nonmem_parse import decode as decode
from ._nonmem_parse import fmt_num as fmt_num
from ._nonmem_parse import format_frame as format_frame
from ._nonmem_parse import missing_mask as missing_mask
from ._nonmem_parse import parse_numeric as parse_numeric
from ._nonmem_parse import parse_text as parse_text
from ._nonmem_parse import read_source as read_source
from ._nonmem_rules import RULES as RULES
from ._nonmem_rules import Compartments as Compartments
from ._nonmem_rules import Records as Records
from ._nonmem_rules import Rule as Rule
from ._nonmem_rules import apply_rules as apply_rules
from ._nonmem_rules import compartment_problems as compartment_problems
from ._nonmem_rules import duplicate_problems as duplicate_problems
from ._nonmem_rules import read_records as read_records
from ._nonmem_rules import resolve_compartments as resolve_compartments
from ._nonmem_rules import subject_problems as subject_problems


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
    lines = np.asarray(lines, dtype=np.int64)

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

    # the records: single-record rules, compartments, subjects
    r = read_records(raw, lines, problems)
    apply_rules(r, problems)
    cmt_col = raw["CMT"] if "CMT" in raw.columns else None
    cmt_vals, cmt_names, unresolved = compartment_problems(cmt_col, r, compartments, problems)
    subject_problems(r, problems)

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
    columns = {
        "ID": r.ids,
        "TIME": r.time,
        "DV": r.dv,
        "AMT": r.amt,
        "EVID": r.evid,
        "CMT": cmt_vals,
        "RATE": r.rate,
        "DUR": r.dur,
        "II": r.ii,
        "ADDL": r.addl,
        "SS": r.ss,
        "MDV": r.mdv,
    }
    duplicate_problems(columns, extras, r, problems)

    if problems:
        raise DatasetError.from_problems(problems, source, convention)

    frame = pd.DataFrame(
        {
            **columns,
            "ID": _as_int_if_whole(r.ids),
            "EVID": r.evid.astype(np.int64),
            "CMT": _cmt_series(cmt_vals),
            "ADDL": r.addl.astype(np.int64),
            "SS": r.ss.astype(np.int64),
            "MDV": r.mdv.astype(np.int64),
            **{c: extras[c].to_numpy() for c in extra},
        }
    )
    names = None if unresolved else np.array(cmt_names, dtype=object)
    return Normalized(frame, names, cov_names, unresolved)


def _as_int_if_whole(x: np.ndarray) -> np.ndarray:
    if len(x) and np.all(x == np.round(x)) and np.all(np.abs(x) < 2**53):
        return x.astype(np.int64)
    return x if len(x) else x.astype(np.int64)


def _cmt_series(vals: list) -> pd.Series:
    if all(isinstance(v, int) for v in vals):
        return pd.Series(vals, dtype=np.int64)
    return pd.Series(vals, dtype=object)
