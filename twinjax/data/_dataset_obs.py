"""The observation columns of a NONMEM dataset (censoring flags and limits, output
tags): read and checked per record for :class:`~._dataset.Dataset`."""

from __future__ import annotations

import numpy as np

from ._nonmem import DatasetError, Problem, fmt_num, missing_mask, parse_numeric

#: Columns that describe observation records (censoring, output tags), never covariates.
#: ``CENS`` (nlmixr2, Monolix): 1 left-censored (the value is below DV, DV = LLOQ),
#: -1 right-censored (above DV), 0 observed. ``BLQ`` (NONMEM M3 datasets): 1 below
#: the LLOQ. ``LLOQ``: the limit per record. ``LIMIT`` (nlmixr2, Monolix): the other end
#: of a censoring interval. ``DVID``: which output the record observes.
OBSERVATION_COLUMNS = ("CENS", "BLQ", "LLOQ", "LIMIT", "DVID")


def observation_info(table, frame, lines, source, convention) -> dict[str, np.ndarray]:
    """Per record: effective MDV, censoring flag and limits, output tag.

    Reads the columns of ``OBSERVATION_COLUMNS`` (names matched case-insensitively):

    - ``CENS`` (nlmixr2 / Monolix): 1 left-censored, the value is below DV (DV holds the
      LLOQ); -1 right-censored, above DV; 0 observed. ``BLQ`` (NONMEM M3 datasets): 1
      below the LLOQ, 0 observed. Only one of them may be given.
    - ``LLOQ``: the limit of a censored record (``CENS``/``BLQ`` 1); without a flag
      column, an observation with ``DV < LLOQ`` is left-censored at its LLOQ.
    - ``LIMIT`` (nlmixr2 / Monolix): the other end of an interval, lower for ``CENS``
      1 (the value lies in ``(LIMIT, DV)``), upper for -1.
    - ``DVID``: the output the record observes (a number or an output name).

    A flagged record whose DV is missing or 0 has no DV in NONMEM's sense (its MDV
    defaults to 1); it is still used as a censored observation when its MDV was left to
    the default and an ``LLOQ`` is given; an explicit ``MDV 1`` leaves it out.

    Raises:
        DatasetError: naming line and column: a flag other than 0/1/-1 (0/1 for BLQ),
            a censored record without a limit, a ``LIMIT`` on the wrong side.
    """
    n = len(frame)
    raw = {str(c).strip().upper(): table[c] for c in table.columns}
    orig = {str(c).strip().upper(): str(c).strip() for c in table.columns}
    problems: list[Problem] = []
    mdv = frame["MDV"].to_numpy(dtype=np.int64).copy()
    evid = frame["EVID"].to_numpy()
    dv = frame["DV"].to_numpy(dtype=float)
    cens = np.zeros(n, dtype=np.int64)
    lloq = np.full(n, np.nan)
    limit = np.full(n, np.nan)
    dvid = np.full(n, None, dtype=object)

    def numbers(key):
        vals, _miss, bad = parse_numeric(raw[key])
        for i in np.flatnonzero(bad):
            msg = f"{raw[key].iat[i]!r} is not a number"
            problems.append(Problem(int(lines[i]), orig[key], msg))
        return vals

    flag_col = None
    if "CENS" in raw and "BLQ" in raw:
        problems.append(
            Problem(
                int(lines[0]) - 1 if n else 1,
                orig["BLQ"],
                "both CENS and BLQ columns are given; use one censoring flag column",
            )
        )
    elif "CENS" in raw or "BLQ" in raw:
        flag_col = "CENS" if "CENS" in raw else "BLQ"
        flags = numbers(flag_col)
        allowed = (0.0, 1.0, -1.0) if flag_col == "CENS" else (0.0, 1.0)
        ok = np.isnan(flags) | np.isin(flags, allowed)
        for i in np.flatnonzero(~ok):
            problems.append(
                Problem(
                    int(lines[i]),
                    orig[flag_col],
                    f"{flag_col} {fmt_num(flags[i])} is not allowed: use 0 (observed), 1 "
                    "(below the LLOQ; DV or LLOQ holds the limit)"
                    + (" or -1 (above DV, right-censored)" if flag_col == "CENS" else ""),
                )
            )
        cens = np.where(ok & ~np.isnan(flags), flags, 0).astype(np.int64)
        cens = np.where(evid == 0, cens, 0)
    if "LLOQ" in raw:
        lq = numbers("LLOQ")
        if flag_col is None:  # DV < LLOQ: censored at the LLOQ
            below = (evid == 0) & (mdv == 0) & np.isfinite(lq) & (dv < lq)
            cens = np.where(below, 1, cens)
    else:
        lq = np.full(n, np.nan)
    if "LIMIT" in raw:
        limit = numbers("LIMIT")
    if "DVID" in raw:
        vals, miss, bad = parse_numeric(raw["DVID"])
        obj = raw["DVID"].astype(object).to_numpy()
        dvid = np.array(
            [
                None
                if m
                else (v.strip() if isinstance(v, str) else v)
                if b
                else (int(x) if float(x).is_integer() else float(x))
                for v, x, m, b in zip(obj, vals, miss, bad, strict=True)
            ],
            dtype=object,
        )
    # MDV given explicitly on the record?
    if "MDV" in raw:
        mdv_given = ~missing_mask(raw["MDV"])
    else:
        mdv_given = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(cens != 0):
        has_dv = mdv[i] == 0
        if not has_dv:
            if mdv_given[i] or not np.isfinite(lq[i]):
                if not mdv_given[i]:  # flagged, no DV, no LLOQ: no limit to censor at
                    problems.append(
                        Problem(
                            int(lines[i]),
                            orig[flag_col or "LLOQ"],
                            f"censored record ({flag_col} {int(cens[i])}) without "
                            "a DV or an LLOQ: give DV = the LLOQ (nlmixr2/Monolix, NONMEM "
                            "M3) or an LLOQ column, or MDV 1 to leave it out",
                        )
                    )
                cens[i] = 0  # an explicit MDV 1 leaves the record out
                continue
            mdv[i] = 0
        if cens[i] == 1:
            bound = lq[i] if np.isfinite(lq[i]) else dv[i]
        else:
            bound = dv[i]
        if not np.isfinite(bound):
            problems.append(
                Problem(int(lines[i]), "DV", "censored record without a finite limit in DV")
            )
            continue
        lloq[i] = bound
        lim = limit[i]
        wrong = (cens[i] == 1 and lim >= bound) or (cens[i] == -1 and lim <= bound)
        if np.isfinite(lim) and wrong:
            side = "below" if cens[i] == 1 else "above"
            problems.append(
                Problem(
                    int(lines[i]),
                    orig["LIMIT"],
                    f"LIMIT {fmt_num(lim)} must be {side} the censoring limit "
                    f"{fmt_num(bound)} (CENS {int(cens[i])}: the value lies between them)",
                )
            )
    limit = np.where(cens != 0, limit, np.nan)
    if problems:
        raise DatasetError.from_problems(problems, source, convention)
    return dict(mdv=mdv, cens=cens, lloq=lloq, limit=limit, dvid=dvid)
