"""The checks of a NONMEM table's records, each problem named by line and column.

- :data:`RULES`: the checks of single records (a missing ID or TIME, negative amounts
  and times, EVID/MDV/DV consistency, infusions, repeats and steady state), a table of
  :class:`Rule` s applied in order by :func:`apply_rules` to the :class:`Records`
  (the standard columns as numbers with NONMEM's defaults, :func:`read_records`);
- :func:`compartment_problems`: every dose (and observation with a CMT) names a known
  compartment, with the model's R / D parameters for RATE -1 / -2;
- :func:`subject_problems`: a subject's records are contiguous and in time order;
- :func:`duplicate_problems`: no two records identical in every column.

:func:`~._nonmem.normalize` runs them and builds the normalised table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ._nonmem_parse import STANDARD, Problem, fmt_num, parse_numeric, show


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
            from ..ode._model import dose_table

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


# ------------------------------------------------------------------------ the records
def refuse(problems: list[Problem], lines: np.ndarray, mask, column: str, message) -> None:
    """A problem in ``column`` for every record of ``mask``; ``message(i)`` says what."""
    for i in np.flatnonzero(mask):
        problems.append(Problem(int(lines[i]), column, message(i)))


@dataclasses.dataclass
class Records:
    """The standard numeric columns of a table, one array each (a missing value NaN,
    absent optional columns at their defaults), as the rules read them.

    ``missing`` holds where ``ID``, ``TIME``, ``DV``, ``EVID`` and ``MDV`` were missing
    before the defaults were filled in. A rule that ``clears`` sets the values it
    refuses to NaN, so that later rules do not report them again.
    """

    lines: np.ndarray
    ids: np.ndarray
    time: np.ndarray
    dv: np.ndarray
    amt: np.ndarray
    rate: np.ndarray
    dur: np.ndarray
    ii: np.ndarray
    addl: np.ndarray
    ss: np.ndarray
    evid: np.ndarray
    mdv: np.ndarray
    missing: dict[str, np.ndarray]
    has_mdv: bool

    @property
    def is_obs(self) -> np.ndarray:
        return self.evid == 0

    @property
    def is_dose(self) -> np.ndarray:
        return np.isin(self.evid, [1, 4])

    @property
    def modelled(self) -> np.ndarray:
        """RATE -1 / -2: rate / duration modelled by the compartment's R / D."""
        return np.isin(self.rate, [-1, -2])

    @property
    def ss_const(self) -> np.ndarray:
        """A steady-state constant infusion: SS 1/2, AMT 0, RATE > 0, II 0."""
        return (self.ss > 0) & (self.amt == 0) & (self.rate > 0) & (self.ii == 0) & ~(self.dur > 0)


def read_records(raw: pd.DataFrame, lines: np.ndarray, problems: list[Problem]) -> Records:
    """The standard columns of ``raw`` as numbers (a cell that is not one is a problem),
    with NONMEM's defaults: AMT, RATE, DUR, II, ADDL, SS 0; EVID 1 where AMT > 0, else 0;
    MDV 0 on an observation record (EVID 0) with a DV, else 1."""
    n = len(raw)
    missing: dict[str, np.ndarray] = {}

    def numeric(name, default=None):
        s = raw[name] if name in raw.columns else None
        if s is None:
            vals, miss = np.full(n, np.nan if default is None else default, float), np.ones(n, bool)
        else:
            vals, miss, bad = parse_numeric(s)
            obj = s.astype(object).to_numpy()
            refuse(problems, lines, bad, name, lambda i: f"{show(obj[i])} is not a number")
            if default is not None:
                vals = np.where(miss, default, vals)
        missing[name] = miss
        return vals

    ids, time, dv = numeric("ID"), numeric("TIME"), numeric("DV")
    amt, rate, dur = numeric("AMT", 0.0), numeric("RATE", 0.0), numeric("DUR", 0.0)
    ii, addl, ss = numeric("II", 0.0), numeric("ADDL", 0.0), numeric("SS", 0.0)
    evid, mdv = numeric("EVID"), numeric("MDV")
    evid = np.where(missing["EVID"], np.where(amt > 0, 1.0, 0.0), evid)
    # an EVID outside 0-4 is refused (and cleared) by the rules below: it is not 0 either
    # way, so the default MDV is the same before and after
    mdv = np.where(missing["MDV"], np.where((evid == 0) & ~missing["DV"], 0.0, 1.0), mdv)
    return Records(
        np.asarray(lines),
        ids,
        time,
        dv,
        amt,
        rate,
        dur,
        ii,
        addl,
        ss,
        evid,
        mdv,
        {k: missing[k] for k in ("ID", "TIME", "DV", "EVID", "MDV")},
        "MDV" in raw.columns,
    )


class Rule(NamedTuple):
    """One check of single records: the records of ``refuses(r)`` are reported in
    ``column`` with ``message(r, i)``; with ``clears``, their value of ``column`` becomes
    missing (NaN) for the rules after it."""

    column: str
    refuses: Callable[[Records], np.ndarray]
    message: Callable[[Records, int], str]
    clears: bool = False


#: The checks of single records, in the order they are applied (a rule reads the values
#: the rules before it left).
RULES: tuple[Rule, ...] = (
    Rule("ID", lambda r: r.missing["ID"], lambda r, i: "ID is missing"),
    Rule("TIME", lambda r: r.missing["TIME"], lambda r, i: "TIME is missing"),
    Rule("TIME", lambda r: r.time < 0, lambda r, i: f"TIME {fmt_num(r.time[i])} is negative"),
    Rule("AMT", lambda r: r.amt < 0, lambda r, i: f"negative dose amount AMT {fmt_num(r.amt[i])}"),
    # event and missing-DV flags
    Rule(
        "EVID",
        lambda r: np.isfinite(r.evid) & ~np.isin(r.evid, [0, 1, 2, 3, 4]),
        lambda r, i: f"EVID {fmt_num(r.evid[i])} is not one of 0, 1, 2, 3, 4",
        clears=True,
    ),
    Rule(
        "MDV",
        lambda r: np.isfinite(r.mdv) & ~np.isin(r.mdv, [0, 1]),
        lambda r, i: f"MDV {fmt_num(r.mdv[i])} is not 0 or 1",
        clears=True,
    ),
    Rule(
        "MDV",
        lambda r: r.has_mdv & (r.mdv == 0) & np.isfinite(r.evid) & ~r.is_obs,
        lambda r, i: (
            f"MDV 0 on a record with EVID {int(r.evid[i])}; only observation records "
            "(EVID 0) may have MDV 0"
        ),
    ),
    Rule(
        "DV",
        lambda r: r.is_obs & (r.mdv == 0) & r.missing["DV"],
        lambda r, i: "an observation record (EVID 0, MDV 0) has no DV; give the value or set MDV 1",
    ),
    Rule(
        "DV",
        lambda r: (r.mdv == 1) & np.isfinite(r.dv) & (r.dv != 0),
        lambda r, i: (
            f"MDV is 1 but DV is {fmt_num(r.dv[i])}; a record without an observation must "
            "have DV '.' (missing) or 0"
        ),
    ),
    Rule(
        "AMT",
        lambda r: (r.amt > 0) & np.isin(r.evid, [0, 2, 3]),
        lambda r, i: (
            f"AMT {fmt_num(r.amt[i])} on a record with EVID {int(r.evid[i])}; doses need "
            "EVID 1 (or 4 to reset and dose)"
        ),
    ),
    # infusions (RATE -1 / -2: rate / duration modelled by the compartment's R / D)
    Rule(
        "RATE",
        lambda r: (r.rate < 0) & ~r.modelled,
        lambda r, i: (
            f"negative RATE {fmt_num(r.rate[i])}; RATE is >= 0, -1 (rate modelled by Rn) or "
            "-2 (duration modelled by Dn)"
        ),
    ),
    Rule("DUR", lambda r: r.dur < 0, lambda r, i: f"negative DUR {fmt_num(r.dur[i])}"),
    Rule(
        "DUR",
        lambda r: (r.rate != 0) & np.isfinite(r.rate) & (r.dur > 0),
        lambda r, i: (
            f"both RATE ({fmt_num(r.rate[i])}) and DUR ({fmt_num(r.dur[i])}) are given; an "
            "infusion takes one of them"
        ),
    ),
    Rule(
        "AMT",
        lambda r: r.is_dose & r.modelled & (r.amt == 0),
        lambda r, i: (
            f"RATE {int(r.rate[i])} with AMT 0: a modelled-rate or -duration dose needs AMT > 0"
        ),
    ),
    # repeats and steady state
    Rule("II", lambda r: r.ii < 0, lambda r, i: f"negative II {fmt_num(r.ii[i])}"),
    Rule(
        "ADDL",
        lambda r: np.isfinite(r.addl) & ((r.addl < 0) | (r.addl != np.round(r.addl))),
        lambda r, i: f"ADDL {fmt_num(r.addl[i])} is not a whole number >= 0",
        clears=True,
    ),
    Rule(
        "II",
        lambda r: (r.addl > 0) & ~(r.ii > 0),
        lambda r, i: (
            f"ADDL is {int(r.addl[i])} but II is {fmt_num(r.ii[i])}; additional doses need "
            "an interdose interval II > 0"
        ),
    ),
    Rule(
        "SS",
        lambda r: np.isfinite(r.ss) & ~np.isin(r.ss, [0, 1, 2]),
        lambda r, i: f"SS {fmt_num(r.ss[i])} is not supported; SS is 0, 1 or 2",
        clears=True,
    ),
    Rule(
        "II",
        lambda r: (r.ss > 0) & ~(r.ii > 0) & ~r.ss_const,
        lambda r, i: (
            f"SS is {int(r.ss[i])} but II is {fmt_num(r.ii[i])}; a steady-state dose needs II > 0 "
            "(or AMT 0, RATE > 0 and II 0 for a steady-state constant infusion)"
        ),
    ),
    Rule(
        "ADDL",
        lambda r: r.ss_const & (r.addl > 0),
        lambda r, i: "a steady-state constant infusion (AMT 0, RATE > 0, II 0) cannot have ADDL",
    ),
    Rule(
        "AMT",
        lambda r: r.is_dose & (r.rate > 0) & (r.amt == 0) & ~r.ss_const,
        lambda r, i: (
            f"RATE {fmt_num(r.rate[i])} with AMT 0: an infusion needs AMT > 0 unless it is a "
            "steady-state constant infusion (SS 1 or 2, II 0)"
        ),
    ),
)


def apply_rules(r: Records, problems: list[Problem], rules: Sequence[Rule] = RULES) -> None:
    """Check every record against ``rules`` in order (see :data:`RULES`)."""
    for rule in rules:
        mask = rule.refuses(r)
        refuse(problems, r.lines, mask, rule.column, lambda i: rule.message(r, i))
        if rule.clears:
            name = rule.column.lower()
            setattr(r, name, np.where(mask, np.nan, getattr(r, name)))


# ------------------------------------------------------------------------ compartments
def compartment_problems(
    cmt_col: pd.Series | None, r: Records, compartments: Compartments, problems: list[Problem]
) -> tuple[list[Any], list[str | None], str | None]:
    """Read CMT (numbers, or names that are not numbers) and name the compartment of
    every dose, and of every observation with a CMT; refuse what cannot be named.

    Returns:
        ``(cmt_values, names, unresolved)``: the CMT of each record (0 when missing), the
        compartment name of each record (None when it has none), and why the numbers
        could not be named (no ``compartments`` given), if so.
    """
    n, lines = len(r.ids), r.lines
    is_dose, is_obs, modelled, rate = r.is_dose, r.is_obs, r.modelled, r.rate
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
                problems.append(Problem(int(lines[i]), "CMT", f"{show(obj[i])} is not a number"))
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
    return cmt_vals, cmt_names, unresolved


# ------------------------------------------------------------------------ subjects
def subject_problems(r: Records, problems: list[Problem]) -> None:
    """A subject's records are contiguous and its times non-decreasing."""
    n, lines, ids, time = len(r.ids), r.lines, r.ids, r.time
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


def duplicate_problems(
    columns: Mapping[str, Any], extras: Mapping[str, pd.Series], r: Records, problems: list[Problem]
) -> None:
    """No two records identical in every column (the standard ones and ``extras``)."""
    n, lines, ids, time = len(r.ids), r.lines, r.ids, r.time
    seen_rows: dict[tuple, int] = {}
    for i in range(n):
        key = tuple(_key(columns[c][i]) for c in STANDARD) + tuple(
            _key(extras[c].iat[i]) for c in extras
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
