"""Observations ready for batched fitting: a dataset or arrays turned into padded
``(N, T)`` arrays, an event table, censoring flags, output tags and the change tables of
time-varying covariates (:func:`prepare_data`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..data import Dataset
from ..dosing._regimen import NOOP, PAD_TIME, EventTable, Regimen, compile_regimens
from ..ode import Model
from ..ode._piecewise import Piecewise
from ._censoring import CENSORING
from ._residual import ErrorModel

PRE_DOSE_EPS = 1e-7  # h: pre-dose observations are evaluated this long before the dose

# Shape buckets: a compiled program is specific to its array shapes, so the batched fits
# pad the number of subjects, of observation records and of event-table rows up to a
# bucket (the next power of two, at least ``minimum``; above ``BUCKET_STEP`` the next
# multiple of it) and mask the padding out. A new patient with another number of
# records, or a batch of 5 instead of 7 subjects, then runs the program compiled before.
BUCKET_STEP = 256
SUBJECT_BUCKET_MIN = 1
RECORD_BUCKET_MIN = 8
EVENT_BUCKET_MIN = 4


def shape_bucket(n: int, minimum: int = 1, step: int = BUCKET_STEP) -> int:
    """The padded size of an axis of length ``n``: the next power of two (at least
    ``minimum``) up to ``step``, then the next multiple of ``step``."""
    n = max(int(n), int(minimum), 1)
    if n > step:
        return -(-n // step) * step
    return 1 << (n - 1).bit_length()


def pad_axis(a, n_to: int, axis: int, fill=None, *, last: bool = False):
    """``a`` padded along ``axis`` to length ``n_to``: with ``fill`` (a scalar), or with
    copies of its first entry along that axis (its last with ``last=True``)."""
    n = a.shape[axis]
    if n_to <= n:
        return a
    xp = np if isinstance(a, np.ndarray) else jnp
    shape = list(a.shape)
    shape[axis] = n_to - n
    if fill is None:
        edge = xp.take(a, xp.arange(n - 1, n) if last else xp.arange(1), axis=axis)
        extra = xp.broadcast_to(edge, tuple(shape))
    else:
        extra = xp.full(tuple(shape), fill, dtype=a.dtype)
    return xp.concatenate([a, extra], axis=axis)


def pad_events(ev: EventTable, e_to: int) -> EventTable:
    """The event table with its record axis padded to ``e_to`` by no-op records at
    ``PAD_TIME`` (the rows ``compile_regimens`` pads shorter regimens with), which
    change no simulation."""
    if e_to <= ev.time.shape[-1]:
        return ev
    ev = jax.tree.map(np.asarray, ev)  # padded on the host: no program per shape
    fill = dict(time=PAD_TIME, amt=0, rate=0, dur=0, cmt=0, kind=NOOP, ii=0, ss=0, hist=-1, seq=0)
    names = tuple(fill)
    new = tuple(pad_axis(getattr(ev, k), e_to, -1, fill[k]) for k in names)
    return eqx.tree_at(lambda e: tuple(getattr(e, k) for k in names), ev, new)


def fit_buckets(n: int, t: int, e: int, multiple: int = 1) -> tuple[int, int, int]:
    """The padded ``(subjects, records, event rows)`` of a batch of ``n`` subjects with
    ``t`` records and ``e`` event rows; the subjects a multiple of ``multiple`` (the
    device count)."""
    nb = shape_bucket(n, SUBJECT_BUCKET_MIN)
    nb = -(-nb // multiple) * multiple
    return nb, shape_bucket(t, RECORD_BUCKET_MIN), shape_bucket(e, EVENT_BUCKET_MIN)


def pad_fit_batch(batch, n_to: int, t_to: int, e_to: int):
    """A fit's batch ``(tv, eta0, ev, ts, y, mask)`` padded to ``n_to`` subjects,
    ``t_to`` records and ``e_to`` event rows.

    Padding subjects are copies of the first with no observation (``mask`` False, no
    censoring), so each sits at its prior mode and touches no other subject (every
    subject's iteration and simulation is its own); padding records repeat the last
    time, unobserved; padding events are no-ops. The real subjects' results are the
    leading ``[:n, :T]`` block, equal to those of the unpadded batch.
    """
    tv, eta0, ev, ts, y, mask = batch
    # padded on the host (numpy): eager device operations would each compile a small
    # program for the unpadded shape, which a new patient or batch size would miss
    tv, eta0, ev, ts, y, mask = jax.tree.map(np.asarray, (tv, eta0, ev, ts, as_obs(y), mask))
    n = eta0.shape[0]
    # records: the last time repeated, nothing observed there
    ts = pad_axis(ts, t_to, 1, last=True)
    y = Obs(
        pad_axis(y.dv, t_to, 1, 1.0),
        pad_axis(y.cens, t_to, 1, 0),
        pad_axis(y.limit, t_to, 1, np.nan),
        pad_axis(y.out, t_to, 1, 0),
    )
    mask = pad_axis(mask, t_to, 1, False)
    ev = pad_events(ev, e_to)
    if n_to > n:
        rows = lambda a: pad_axis(a, n_to, 0)  # noqa: E731
        tv = jax.tree.map(rows, tv)
        ev = jax.tree.map(rows, ev)
        ts, eta0 = rows(ts), pad_axis(eta0, n_to, 0, 0.0)
        y = Obs(rows(y.dv), pad_axis(y.cens, n_to, 0, 0), rows(y.limit), rows(y.out))
        mask = pad_axis(mask, n_to, 0, False)
    return tv, eta0, ev, ts, y, mask


def usable_records(error: ErrorModel, dv: np.ndarray) -> np.ndarray:
    """``error.usable(dv)`` on the host (numpy; ``dv`` already in the fit's dtype):
    positive records for a log error, else every record but an infinite one (NaN is
    kept: a broken subject is flagged). The same as :meth:`ErrorModel.usable`
    (tests/test_latency.py checks it), without a device program per data shape."""
    if error.kind == "log":
        return dv > 0
    return ~np.isinf(dv)


# ============================================================================ data
@dataclasses.dataclass(frozen=True, eq=False)
class FitData:
    """Observations of ``N`` subjects, ready for batched fitting.

    Attributes:
        ids: subject IDs.
        times: ``(N, T)`` observation times as recorded.
        t_eval: ``(N, T)`` times at which the model is evaluated (pre-dose
            observations a tiny ``PRE_DOSE_EPS`` before their dose; see
            :func:`prepare_data`).
        dv: ``(N, T)`` observations (1.0 where ``mask`` is False).
        mask: ``(N, T)`` bool, True for observations used in the fit.
        regimens: one :class:`~twinjax.Regimen` per subject.
        ev: the compiled ``(N, ...)`` event table (shifted as described).
        covariates: a pandas DataFrame of baseline covariates, one row per subject.
        cens: ``(N, T)`` int censoring flags: 0 observed, 1 below ``dv`` (the LLOQ),
            -1 above ``dv`` (None: no censoring).
        limit: ``(N, T)`` the other end of a censoring interval (NaN: none).
        out: ``(N, T)`` int: the index in ``outputs`` of each record's output.
        outputs: the fitted outputs, in the order of the error models.
        lines: ``(N, T)`` file lines of the records (0: unknown), for messages.
        varying: ``{covariate: Piecewise}`` the covariates that change within a
            subject, each ``(N, C)`` on the times of every record of the subject with
            NONMEM's convention (``"nocb"``), shifted like the event table.
        occasions: the :class:`~twinjax.calibrate._iov.Occasions` of a fit with
            inter-occasion variability (None: none read).
    """

    ids: list
    times: np.ndarray
    t_eval: np.ndarray
    dv: np.ndarray
    mask: np.ndarray
    regimens: list
    ev: EventTable
    covariates: Any
    cens: np.ndarray | None = None
    limit: np.ndarray | None = None
    out: np.ndarray | None = None
    outputs: tuple = ()
    lines: np.ndarray | None = None
    varying: dict = dataclasses.field(default_factory=dict)
    occasions: Any = None

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def censored(self) -> np.ndarray:
        """``(N, T)`` bool: used records that are censored."""
        if self.cens is None:
            return np.zeros(self.mask.shape, bool)
        return self.mask & (self.cens != 0)

    def obs(self, dtype=None) -> Obs:
        """The observations as the :class:`Obs` the objective takes."""
        dtype = dtype or self.ev.time.dtype
        shape = self.dv.shape
        cens = np.zeros(shape, np.int32) if self.cens is None else self.cens
        limit = np.full(shape, np.nan) if self.limit is None else self.limit
        out = np.zeros(shape, np.int32) if self.out is None else self.out
        return Obs(
            jnp.asarray(self.dv, dtype),
            jnp.asarray(cens, jnp.int32),
            jnp.asarray(limit, dtype),
            jnp.asarray(out, jnp.int32),
        )

    def subset(self, idx) -> FitData:
        """The subjects at positions ``idx``."""
        idx = np.asarray(idx, dtype=np.int64)

        def take(a):
            return None if a is None else a[idx]

        return FitData(
            ids=[self.ids[i] for i in idx],
            times=self.times[idx],
            t_eval=self.t_eval[idx],
            dv=self.dv[idx],
            mask=self.mask[idx],
            regimens=[self.regimens[i] for i in idx],
            ev=jax.tree.map(lambda a: a[idx], self.ev),
            covariates=self.covariates.iloc[idx],
            cens=take(self.cens),
            limit=take(self.limit),
            out=take(self.out),
            outputs=self.outputs,
            lines=take(self.lines),
            varying={k: jax.tree.map(lambda a: a[idx], v) for k, v in self.varying.items()},
            occasions=None if self.occasions is None else self.occasions.subset(idx),
        )


class Obs(eqx.Module):
    """Observations as the objective sees them (all ``(N, T)``).

    Attributes:
        dv: the observation; for a censored record its limit (LLOQ for ``cens`` 1,
            the upper limit for -1).
        cens: 0 observed, 1 left-censored (below ``dv``), -1 right-censored (above).
        limit: the other end of a censoring interval (NaN: none).
        out: index of the record's output in the fit's outputs.
    """

    dv: jax.Array
    cens: jax.Array
    limit: jax.Array
    out: jax.Array


def as_obs(y) -> Obs:
    """``y`` as an :class:`Obs` (a plain array: uncensored records of output 0)."""
    if isinstance(y, Obs):
        return y
    y = jnp.asarray(y)
    z = jnp.zeros(y.shape, jnp.int32)
    return Obs(y, z, jnp.full(y.shape, jnp.nan, y.dtype), z)


def _pre_dose_flags(ds: Dataset) -> list[np.ndarray]:
    """Per subject: which observation records precede a dose at the same time."""
    f = ds.data
    out = []
    for sid in ds.ids:
        rec = f[f["ID"] == sid]
        evid = rec["EVID"].to_numpy()
        t = rec["TIME"].to_numpy(dtype=float)
        flags = []
        for j in np.flatnonzero(evid == 0):
            later = (t[j + 1 :] == t[j]) & np.isin(evid[j + 1 :], (1, 3, 4))
            flags.append(bool(later.any()))
        out.append(np.asarray(flags, dtype=bool))
    return out


def resolve_outputs(model: Model, error, output: str | None = None):
    """``(outputs, errors)``: the fitted outputs and their error models.

    ``error`` is one :class:`ErrorModel` (for ``output``, default the model's first
    output) or a mapping ``{output: ErrorModel}`` (several outputs; ``output`` must
    then be None or the first of them).

    Raises:
        ValueError: an unknown output, an empty mapping, a value that is no ErrorModel.
        TypeError: ``error`` of another kind.
    """
    if error is None:
        error = ErrorModel("additive", add=1.0)
    if isinstance(error, ErrorModel):
        outputs: tuple = (output or model.output_names[0],)
        errors: tuple = (error,)
    elif isinstance(error, Mapping):
        if not error:
            raise ValueError("error={} names no output; give {output: ErrorModel(...)}")
        outputs = tuple(error)
        errors = tuple(error.values())
        bad = [k for k, e in error.items() if not isinstance(e, ErrorModel)]
        if bad:
            raise TypeError(f"error[{bad[0]!r}] must be an ErrorModel, got {error[bad[0]]!r}")
        if output is not None and output != outputs[0]:
            raise ValueError(
                f"output={output!r} with error per output {list(outputs)}: the outputs "
                "are the keys of error; leave output out"
            )
    else:
        raise TypeError(
            f"error must be an ErrorModel or {{output: ErrorModel}}, got {type(error).__name__}"
        )
    unknown = [o for o in outputs if o not in model.output_names]
    if unknown:
        raise ValueError(f"unknown output {unknown[0]!r}; the model has {list(model.output_names)}")
    return outputs, errors


def _tag_outputs(tags, used, lines, outputs, dvid, column) -> np.ndarray:
    """``(N, T)`` output indices from the records' tags; refuses unknown tags."""
    mapping: dict = {}
    if dvid is not None:
        bad = {k: v for k, v in dict(dvid).items() if v not in outputs}
        if bad:
            k = next(iter(bad))
            raise ValueError(
                f"dvid maps {column} {k!r} to {bad[k]!r}, which is not a fitted output; "
                f"the fitted outputs are {list(outputs)}"
            )
        mapping = {_tag_key(k): outputs.index(v) for k, v in dict(dvid).items()}
        allowed = ", ".join(f"{k!r} -> {v!r}" for k, v in dict(dvid).items())
    else:
        for j, o in enumerate(outputs):
            mapping[_tag_key(o)] = j
            mapping[_tag_key(j + 1)] = j
        allowed = ", ".join(f"{j + 1} or {o!r} -> {o!r}" for j, o in enumerate(outputs))
    out = np.zeros(used.shape, np.int32)
    problems = []
    for i, t in zip(*np.nonzero(used)):
        key = _tag_key(tags[i, t])
        if key not in mapping:
            where = (
                f"line {int(lines[i, t])}"
                if lines is not None and lines[i, t]
                else (f"subject {i}, observation {t}")
            )
            problems.append(f"{where}: {column} {tags[i, t]!r}")
        else:
            out[i, t] = mapping[key]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(
            f"{len(problems)} observation record(s) name no fitted output: "
            + "; ".join(problems[:5])
            + more
            + f". Allowed {column} values: {allowed}"
            + ("" if dvid is not None else " (or give dvid={value: output})")
        )
    return out


def _tag_key(v):
    if v is None:
        return None
    if isinstance(v, str):
        return v.strip()
    try:
        x = float(v)
    except (TypeError, ValueError):
        return v
    if np.isnan(x):
        return None
    return int(x) if x.is_integer() else x


def prepare_data(
    model: Model,
    data,
    error=None,
    dtype=None,
    *,
    output: str | None = None,
    lloq: float | None = None,
    censoring: str | None = None,
    dvid=None,
    output_column: str = "DVID",
    occasion_column: str | None = None,
) -> FitData:
    """Turn a dataset into the padded arrays the fits run on.

    NONMEM processes records in file order, so an observation listed *before* a dose
    at the same time is a pre-dose (trough) concentration, while the simulation's
    saved state at a time includes that time's doses (right-continuous). Such
    observations are evaluated ``PRE_DOSE_EPS`` (1e-7 time units) before the dose;
    at time 0, where that is impossible, the subject's whole event table is shifted by
    ``PRE_DOSE_EPS`` instead.

    Arguments:
        model: the model (for compartment names).
        data: a :class:`~twinjax.data.Dataset`, or a mapping with ``times`` (N, T),
            ``dv`` (N, T), optional ``mask`` (N, T), ``regimens`` (N Regimens),
            optional ``covariates`` (DataFrame or ``{name: (N,)}``) and ``ids``.
        error: the residual error model (``"log"`` leaves out DV <= 0), or a mapping
            ``{output: ErrorModel}`` for several outputs (see :func:`fit_individual`).
        dtype: floating dtype of the arrays.
        output: the single fitted output (default: the model's first).
        lloq: a constant LLOQ: observations below it are left-censored at it
            (besides those the dataset's ``CENS``/``BLQ``/``LLOQ`` columns mark).
        censoring: ``"m3"``, ``"m4"`` or ``"drop"`` (leave censored records out);
            None: ``"m3"``.
        dvid: ``{tag: output}``: which output a record's tag (``output_column``)
            names; default: tag ``k`` (1, 2, ...) is the k-th output, and a tag equal to
            an output name is that output.
        output_column: ``"DVID"`` (default) or ``"CMT"``: the column tagging records.
        occasion_column: read each record's occasion from this column (a fit with
            inter-occasion variability; see :mod:`twinjax.calibrate._iov`); a Dataset
            is then required.

    Returns:
        A :class:`FitData`.

    Raises:
        ValueError: inconsistent shapes, a missing field, an unknown output, or a
            record whose tag names no fitted output (naming its line and the allowed
            tags).
    """
    import pandas as pd

    # jax's Config stubs do not declare the flag attributes
    dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)  # type: ignore[attr-defined]
    if isinstance(data, FitData):
        if occasion_column is not None and data.occasions is None:
            raise ValueError(
                f"IOV needs occasions ({occasion_column!r}); this FitData has none: give the "
                "Dataset instead"
            )
        return data
    if occasion_column is not None and not isinstance(data, Dataset):
        raise ValueError(
            f"IOV needs the data as a twinjax Dataset with an occasion column "
            f"({occasion_column!r}) on every record, got {type(data).__name__}"
        )
    outputs, errors = resolve_outputs(model, error, output)
    if censoring is not None and censoring not in CENSORING:
        raise ValueError(f"censoring must be one of {list(CENSORING)}, got {censoring!r}")
    if lloq is not None and not (np.isfinite(lloq)):
        raise ValueError(f"lloq must be a finite number, got {lloq!r}")
    if output_column not in ("DVID", "CMT"):
        raise ValueError(f"output_column must be 'DVID' or 'CMT', got {output_column!r}")
    tags = lines = None
    if isinstance(data, Dataset):
        pad = data.padded()
        ids, times, dv, mask, regimens = pad.ids, pad.times, pad.dv, pad.mask, pad.regimens
        cens = np.asarray(pad.cens, np.int32)
        limit = np.asarray(pad.limit, float)
        dv = np.where(cens != 0, np.asarray(pad.lloq), dv)
        lines = pad.lines
        tags = pad.dvid if output_column == "DVID" else pad.cmt
        if output_column == "DVID" and "DVID" not in [c.upper() for c in data.data.columns]:
            tags = None
        covariates = data.covariates.reset_index()
        covariates.attrs["time_varying"] = data.time_varying
        varying = {c: data.piecewise(c) for c in data.time_varying}
        flags = _pre_dose_flags(data)
        pre = np.zeros_like(mask)
        for i, fl in enumerate(flags):
            pre[i, : len(fl)] = fl
    elif isinstance(data, Mapping):
        missing = [k for k in ("times", "dv", "regimens") if k not in data]
        if missing:
            raise ValueError(f"data mapping lacks {missing}; give times, dv and regimens")
        times = np.asarray(data["times"], dtype=float)
        dv = np.asarray(data["dv"], dtype=float)
        if times.ndim != 2 or dv.shape != times.shape:
            raise ValueError(f"times and dv must be (N, T) arrays, got {times.shape}, {dv.shape}")
        mask = np.asarray(data.get("mask", np.ones(times.shape, bool)), dtype=bool)
        regimens = list(data["regimens"])
        if len(regimens) != times.shape[0] or mask.shape != times.shape:
            raise ValueError(
                f"need one regimen per subject ({times.shape[0]}), got {len(regimens)}; "
                f"mask {mask.shape}"
            )
        ids = list(data.get("ids", range(1, times.shape[0] + 1)))
        cov = data.get("covariates")
        covariates = pd.DataFrame(dict(cov) if cov is not None else {}, index=range(len(ids)))
        pre = np.asarray(data.get("pre_dose", np.zeros(times.shape, bool)), dtype=bool)
        varying = {}
        cens = np.asarray(data.get("cens", np.zeros(times.shape, np.int32)), dtype=np.int32)
        limit = np.asarray(data.get("limit", np.full(times.shape, np.nan)), dtype=float)
        if cens.shape != times.shape or limit.shape != times.shape:
            raise ValueError(f"cens and limit must be {times.shape} arrays like times")
        if not np.all(np.isin(cens, (0, 1, -1))):
            raise ValueError("cens values must be 0 (observed), 1 (below dv) or -1 (above dv)")
        if "dvid" in data:
            tags = np.asarray(data["dvid"], dtype=object)
            if tags.shape != times.shape:
                raise ValueError(f"dvid must be a {times.shape} array like times")
    else:
        raise TypeError(
            f"data must be a twinjax Dataset or a mapping of arrays, got {type(data).__name__}"
        )
    if lloq is not None:  # a constant LLOQ: observations below it are censored at it
        below = mask & (cens == 0) & (dv < lloq)
        cens = np.where(below, 1, cens).astype(np.int32)
        dv = np.where(below, lloq, dv)
    if censoring == "drop":  # Beal's M1: censored records are left out
        mask = mask & (cens == 0)
    cens = np.where(mask, cens, 0).astype(np.int32)
    # output of each record
    if len(outputs) > 1:
        if tags is None:
            raise ValueError(
                f"several outputs {list(outputs)} are fitted but the data tag no records with "
                f"an output: give a {output_column} column (or 'dvid' in a data mapping)"
            )
        out = _tag_outputs(tags, mask, lines, outputs, dvid, output_column)
    elif tags is not None and dvid is not None:
        out = _tag_outputs(tags, mask, lines, outputs, dvid, output_column)
    else:
        out = np.zeros(times.shape, np.int32)
        if tags is not None and output_column == "DVID":
            seen = sorted({_tag_key(t) for t in tags[mask]} - {None}, key=str)
            if len(seen) > 1:
                raise ValueError(
                    f"the data tag observations with DVID values {seen} but one output "
                    f"{outputs[0]!r} is fitted; give error={{output: ErrorModel}} for each "
                    "output (and dvid={value: output} if the values are not 1, 2, ...)"
                )
    # records an error model cannot use (DV <= 0 of a log error)
    for j, e in enumerate(errors):
        sel = out == j
        use = usable_records(e, np.asarray(dv, dtype))
        mask = mask & (~sel | use)
    cens = np.where(mask, cens, 0).astype(np.int32)
    dv = np.where(mask, dv, 1.0)
    N = times.shape[0]
    shift = np.where(np.any(pre & (times < PRE_DOSE_EPS), axis=1), PRE_DOSE_EPS, 0.0)
    t_eval = times + shift[:, None] - np.where(pre, PRE_DOSE_EPS, 0.0)
    t_eval = np.maximum(t_eval, 0.0)
    # keep rows non-decreasing after the adjustment
    t_eval = np.maximum.accumulate(t_eval, axis=1)
    # compile each distinct regimen object once, then gather (a cohort often shares one)
    uniq: dict[int, int] = {}
    order = []
    for r in regimens:
        order.append(uniq.setdefault(id(r), len(uniq)))
    first = {v: regimens[i] for i, v in reversed(list(enumerate(order)))}
    distinct = [first[j] if first[j] is not None else Regimen() for j in range(len(uniq))]
    ev = compile_regimens(distinct, model, dtype=dtype)
    if len(distinct) != len(regimens):
        gather = np.asarray(order, dtype=np.int64)
        ev = jax.tree.map(lambda a: a[gather], ev)
    if np.any(shift > 0):  # on the host: an eager device sum is a program per shape
        s = np.asarray(shift, dtype)
        time = jax.device_put(np.asarray(ev.time) + s[:, None])
        ev = eqx.tree_at(
            lambda e: (e.time, e.ss_time), ev, (time, jax.device_put(np.asarray(ev.ss_time) + s))
        )
    # time-varying covariates: (N, C) tables on one grid (every record's time), shifted
    # like the event table so that doses and observations see their records' values
    varying = _change_tables(varying, shift)
    occasions = None
    if occasion_column is not None:
        from ._iov import occasion_table

        occasions = occasion_table(data, occasion_column, shift, PRE_DOSE_EPS)
        if occasion_column in varying:  # the occasion is no covariate of the model
            varying = {k: v for k, v in varying.items() if k != occasion_column}
    tv_names = covariates.attrs.get("time_varying", [])
    covariates = covariates.reset_index(drop=True)
    covariates.attrs["time_varying"] = tv_names
    if len(covariates) != N:
        raise ValueError(f"covariate table has {len(covariates)} rows, need {N}")
    return FitData(
        ids,
        times,
        t_eval,
        dv,
        mask,
        regimens,
        ev,
        covariates,
        cens=cens,
        limit=np.where(cens != 0, limit, np.nan),
        out=out,
        outputs=tuple(outputs),
        lines=lines,
        varying=varying,
        occasions=occasions,
    )


def _change_tables(varying: dict, shift) -> dict:
    """The time-varying covariates' NOCB tables on one grid, keeping only the record
    times at which some covariate changes (fewer events for the engine), shifted by
    ``shift`` (N,); rows padded by repeating their last entry."""
    if not varying:
        return {}
    names = list(varying)
    T = np.asarray(varying[names[0]].times, float)
    V = np.stack([np.asarray(varying[c].values, float) for c in names])  # (K, N, C)
    for c in names:
        if not np.array_equal(np.asarray(varying[c].times, float), T):
            raise ValueError("time-varying covariates must share their record times")
    N, C = T.shape
    # NOCB: the value of record j holds on (t_{j-1}, t_j]; record j is redundant when
    # record j + 1 carries the same values of every covariate
    keep = np.ones((N, C), bool)
    keep[:, :-1] = np.any(V[:, :, :-1] != V[:, :, 1:], axis=0)
    width = int(keep.sum(1).max())
    Tn = np.empty((N, width))
    Vn = np.empty((len(names), N, width))
    for i in range(N):
        j = np.flatnonzero(keep[i])
        j = np.concatenate([j, np.full(width - j.size, j[-1])])
        Tn[i] = T[i, j] + shift[i]
        Vn[:, i] = V[:, i, j]
    return {c: Piecewise(Tn, Vn[m], "nocb") for m, c in enumerate(names)}
