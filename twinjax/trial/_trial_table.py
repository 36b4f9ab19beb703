"""Endpoints evaluated on an arm's simulated outputs: the per-patient table (endpoints,
baselines of change endpoints, dropout and LOCF) and the outputs' percentile bands."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ._endpoint_kinds import Value
from ._endpoints import Endpoint


def arm_table(arm_name, n, status, cohort, vals, var, seed, i, times, endpoints):
    """One arm's per-patient table (status, covariates, endpoints; dropout columns) and
    its percentile bands of the outputs, from the simulated ``vals`` and ``status``.

    With a :class:`~twinjax.trial.Variability`, the placebo response is added (in every
    arm) and the endpoints read the measured values (residual error per saved time).

    Returns:
        ``(table, {output: (5, T) bands over the patients with status 0})``.
    """
    tab = pd.DataFrame({"arm": arm_name, "patient": np.arange(n), "status": status})
    cov = cohort.covariates.reset_index(drop=True)
    for c in cov.columns:
        tab[c] = np.asarray(cov[c])
    measured = vals
    if var is not None:
        vals = var.add_placebo(times, vals, seed, i)  # in every arm
        measured = var.measure(vals, seed, i)  # residual error per saved time
    for e in endpoints:
        tab[e.name] = e.compute(times, measured)
        bcol = baseline_column(e, endpoints)
        if bcol is not None:  # the baseline of a change endpoint, for the ANCOVA
            base = dataclasses.replace(e, kind=Value(), time=e.baseline_time)
            tab[bcol] = base.compute(times, measured)
    if var is not None and var.dropout is not None:
        drop = var.dropout_times(times, vals, n, seed, i)
        apply_dropout(tab, drop, var.dropout.analysis, endpoints, times, measured)
    return tab, {o: bands(v[status == 0]) for o, v in vals.items()}


def baseline_column(e: Endpoint, endpoints) -> str | None:
    """The table column with the baseline of a ``change`` endpoint (a kind with a
    ``baseline_covariate``); None for other kinds (or when an endpoint already has that
    name)."""
    name = f"{e.name}_baseline"
    if not e.kind.baseline_covariate or any(o.name == name for o in endpoints):
        return None
    return name


def apply_dropout(tab, drop, analysis, endpoints, times, measured) -> None:
    """Flag dropped patients and blank what was not observed after their dropout.

    ``dropped``/``dropout_time`` columns; an endpoint read after the patient's dropout is
    missing (NaN), except with ``analysis="locf"`` for ``value``/``change``/``responder``
    endpoints, which read at the last visit (an endpoint time of the same output) not
    after the dropout. The patients stay in the table.
    """
    dropped = np.isfinite(drop)
    tab["dropped"] = dropped
    tab["dropout_time"] = np.where(dropped, drop, np.nan)
    t_end = float(times[-1])
    for e in endpoints:
        if e.kind.needs_time:  # value, change, responder
            last = max(e.time, e.baseline_time)
        elif e.window is not None:
            last = e.window[1]
        else:
            last = t_end
        lost = drop < last
        if not lost.any():
            continue
        col = tab[e.name].to_numpy(float).copy()
        col[lost] = np.nan
        if analysis == "locf" and e.kind.needs_time:
            visits = sorted(
                {o.time for o in endpoints if o.output == e.output and o.time is not None}
                | {o.baseline_time for o in endpoints if o.output == e.output}
            )
            lo = e.baseline_time if e.kind.reads_baseline else -np.inf
            for v in visits:
                if not lo <= v < e.time:
                    continue
                nxt = min([w for w in visits if w > v] + [np.inf])
                who = lost & (drop >= v) & (drop < nxt)
                if who.any():
                    at = dataclasses.replace(e, time=v).compute(times, measured)
                    col[who] = np.asarray(at, float)[who]
        tab[e.name] = col
        bcol = baseline_column(e, endpoints)
        if bcol is not None:
            b = tab[bcol].to_numpy(float).copy()
            b[drop < e.baseline_time] = np.nan
            tab[bcol] = b


def bands(v: np.ndarray) -> np.ndarray:
    """``(5, T)`` percentiles 5, 25, 50, 75, 95 per time; NaN where nothing is finite."""
    q = np.full((5, v.shape[1]), np.nan)
    has = np.isfinite(v).any(axis=0) if v.shape[0] else np.zeros(v.shape[1], bool)
    if has.any():
        q[:, has] = np.nanpercentile(v[:, has], [5, 25, 50, 75, 95], axis=0)
    return q
