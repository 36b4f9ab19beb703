"""Doses and regimens with NONMEM semantics, compiled to padded event arrays."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

# record kinds in a compiled event table
NOOP, BOLUS, INF_RATE, INF_DUR, RESET = 0, 1, 2, 3, 4
PAD_TIME = 1.0e9


from ..model._model import _is_concrete as _concrete  # noqa: E402


def _num(x, field: str, where: str, *, nonneg=True, integer=False):
    if not _concrete(x):
        return
    v = np.asarray(x)
    if v.shape != ():
        raise ValueError(f"{where}: {field} must be a scalar, got shape {v.shape}")
    if not np.isfinite(v):
        raise ValueError(f"{where}: {field} = {v} is not finite")
    if nonneg and v < 0:
        raise ValueError(f"{where}: {field} = {v} is negative; it must be >= 0")
    if integer and float(v) != int(v):
        raise ValueError(f"{where}: {field} = {v} must be an integer")


@dataclasses.dataclass(frozen=True, eq=False)
class Dose:
    """One dosing record, as a row of a NONMEM dataset.

    Arguments:
        amt: amount (AMT), in the unit of the target compartment (e.g. mg).
        cmt: the name of the dosed state (CMT), e.g. ``"depot"`` or ``"central"``.
        time: time of the dose (TIME), in the model's time unit (h for PK models).
        rate: zero-order infusion rate (RATE); the duration is ``F * amt / rate``.
        dur: infusion duration (DUR); the rate is ``F * amt / dur``. Give ``rate`` or
            ``dur``, not both; with neither the dose is a bolus.
        ii: interdose interval (II) for ``addl`` and ``ss``.
        addl: number of additional doses (ADDL) every ``ii`` after this one.
        ss: steady-state flag (SS). ``1``: the system is at the periodic steady state
            of this dose repeated every ``ii`` when it is given (previous doses are
            discarded, as NONMEM does).
        evid: 1 (dose) or 4 (reset the system, then dose).

    Bioavailability and lag time are model parameters (see
    ``Model.dose_parameters``), so they stay differentiable and vary per patient.
    ``amt`` and ``time`` may be JAX arrays, so gradients flow to them.
    """

    amt: float
    cmt: str
    time: float = 0.0
    rate: float = 0.0
    dur: float = 0.0
    ii: float = 0.0
    addl: int = 0
    ss: int = 0
    evid: int = 1

    def __post_init__(self):
        where = f"Dose(cmt={self.cmt!r}, time={self.time})"
        if not isinstance(self.cmt, str) or not self.cmt:
            raise ValueError(f"{where}: cmt must be a compartment name (a non-empty string)")
        _num(self.amt, "amt", where)
        _num(self.time, "time", where)
        _num(self.rate, "rate", where)
        _num(self.dur, "dur", where)
        _num(self.ii, "ii", where)
        _num(self.addl, "addl", where, integer=True)
        if self.ss not in (0, 1):
            raise ValueError(f"{where}: ss = {self.ss}; supported values are 0 and 1")
        if self.evid not in (1, 4):
            raise ValueError(
                f"{where}: evid = {self.evid}; a Dose has evid 1 (dose) or 4 (reset and dose); "
                "use Reset for evid 3"
            )
        if _concrete(self.rate) and _concrete(self.dur) and self.rate > 0 and self.dur > 0:
            raise ValueError(f"{where}: give rate or dur for an infusion, not both")
        needs_ii = (_concrete(self.addl) and self.addl > 0) or self.ss == 1
        if needs_ii and _concrete(self.ii) and not self.ii > 0:
            raise ValueError(f"{where}: addl > 0 or ss = 1 needs an interdose interval ii > 0")
        if (
            self.ss == 1
            and _concrete(self.dur)
            and _concrete(self.ii)
            and self.dur > 0
            and self.dur > self.ii
        ):
            raise ValueError(f"{where}: steady-state infusion with dur {self.dur} > ii {self.ii}")

    @property
    def is_infusion(self) -> bool:
        return _positive(self.rate) or _positive(self.dur)

    def expand(self) -> list[Dose]:
        """This record and its ADDL repeats as single doses."""
        n = int(self.addl)
        return [
            dataclasses.replace(
                self,
                time=self.time + i * self.ii,
                addl=0,
                ss=self.ss if i == 0 else 0,
                evid=self.evid if i == 0 else 1,
            )
            for i in range(n + 1)
        ]


def _positive(x) -> bool:
    if _concrete(x):
        return bool(np.asarray(x) > 0)
    return True


@dataclasses.dataclass(frozen=True, eq=False)
class Reset:
    """A system reset (EVID 3): every state returns to ``Model.init`` and infusions stop."""

    time: float

    def __post_init__(self):
        _num(self.time, "time", f"Reset(time={self.time})")


class EventTable(eqx.Module):
    """A regimen compiled to arrays (one row per dose record, padded).

    Leading axes are patients when stacked. ``kind`` is one of NOOP, BOLUS,
    INF_RATE, INF_DUR, RESET; ``cmt`` indexes ``model.state_names``.
    ``ss_*`` fields describe at most one steady-state record per regimen (``ss_on``
    is 0 when the patient has none).
    """

    time: jax.Array
    amt: jax.Array
    rate: jax.Array
    dur: jax.Array
    cmt: jax.Array
    kind: jax.Array
    ss_on: jax.Array
    ss_time: jax.Array
    ss_amt: jax.Array
    ss_rate: jax.Array
    ss_dur: jax.Array
    ss_ii: jax.Array
    ss_cmt: jax.Array
    ss_kind: jax.Array
    has_infusion: bool = eqx.field(static=True)
    has_ss: bool = eqx.field(static=True)

    @property
    def n_records(self) -> int:
        return self.time.shape[-1]


class Regimen:
    """A patient's dosing regimen: an ordered collection of :class:`Dose` and :class:`Reset`.

    Example:
        ```python
        Regimen([Dose(amt=500, cmt="depot", time=0, ii=12, addl=13)])  # 7 days, q12h
        Regimen.repeat(500, "depot", every=12, n=14)
        ```
    """

    def __init__(self, doses: Iterable[Dose | Reset] = ()):
        doses = list(doses)
        for i, d in enumerate(doses):
            if not isinstance(d, (Dose, Reset)):
                raise TypeError(f"Regimen item {i} is {type(d).__name__}; expected Dose or Reset")
        self.doses: tuple[Dose | Reset, ...] = tuple(doses)
        n_ss = sum(1 for d in self.doses if isinstance(d, Dose) and d.ss == 1)
        if n_ss > 1:
            raise ValueError("A regimen may hold at most one steady-state (ss=1) record")

    @classmethod
    def repeat(cls, amt, cmt, *, every, n, start=0.0, rate=0.0, dur=0.0) -> Regimen:
        """``n`` doses of ``amt`` into ``cmt`` every ``every`` time units from ``start``."""
        if n < 1:
            raise ValueError(f"Regimen.repeat: n = {n}; need at least one dose")
        return cls([Dose(amt, cmt, start, rate, dur, ii=every if n > 1 else 0.0, addl=n - 1)])

    def __add__(self, other: Regimen) -> Regimen:
        return Regimen(self.doses + other.doses)

    def __len__(self):
        return len(self.doses)

    def __repr__(self):
        return f"Regimen({list(self.doses)!r})"

    @property
    def compartments(self) -> set[str]:
        return {d.cmt for d in self.doses if isinstance(d, Dose)}

    def records(self) -> list[Dose | Reset]:
        """Expanded single records sorted by time (a reset before a dose at equal times)."""
        out: list[Dose | Reset] = []
        for d in self.doses:
            if isinstance(d, Reset):
                out.append(d)
            else:
                if d.evid == 4:
                    out.append(Reset(d.time))
                    d = dataclasses.replace(d, evid=1)
                out.extend(d.expand())
        if all(_concrete(r.time) for r in out):
            out.sort(key=lambda r: (float(r.time), 0 if isinstance(r, Reset) else 1))
        return out

    def validate(self, model) -> None:
        """Raise ValueError if a dose targets an unknown compartment."""
        valid = list(model.state_names)
        for i, d in enumerate(self.doses):
            if isinstance(d, Dose) and d.cmt not in valid:
                raise ValueError(
                    f"Dose {i} (time {d.time}) goes to unknown compartment {d.cmt!r}; valid "
                    f"compartments of {type(model).__name__} are {valid}"
                )

    def compile(self, model, n_records: int | None = None, dtype=None) -> EventTable:
        """Compile to an :class:`EventTable` padded to ``n_records`` rows."""
        return compile_regimens([self], model, n_records=n_records, dtype=dtype, squeeze=True)


def compile_regimens(
    regimens: Sequence[Regimen | None],
    model,
    *,
    n_records: int | None = None,
    dtype=None,
    squeeze: bool = False,
) -> EventTable:
    """Compile one regimen per patient into one padded, stacked :class:`EventTable`."""
    from ..model._model import _default_float

    dtype = dtype or _default_float()
    names = list(model.state_names)
    rows = []
    for r in regimens:
        r = r if r is not None else Regimen()
        r.validate(model)
        rows.append(r.records())
    has_inf = any(isinstance(d, Dose) and d.is_infusion for rec in rows for d in rec)
    has_ss = any(isinstance(d, Dose) and d.ss == 1 for rec in rows for d in rec)
    k = max([len(rec) for rec in rows] + [1])
    if n_records is not None:
        if n_records < k:
            raise ValueError(f"n_records={n_records} is smaller than the longest regimen ({k})")
        k = n_records

    cols: dict[str, list] = {c: [] for c in ("time", "amt", "rate", "dur", "cmt", "kind")}
    ss_cols: dict[str, list] = {
        c: [] for c in ("on", "time", "amt", "rate", "dur", "ii", "cmt", "kind")
    }
    zero = 0.0
    for rec in rows:
        t, a, ra, du, cm, ki = [], [], [], [], [], []
        ss = None
        for d in rec:
            if isinstance(d, Reset):
                t.append(d.time)
                a.append(zero)
                ra.append(zero)
                du.append(zero)
                cm.append(0)
                ki.append(RESET)
                continue
            kind = BOLUS
            if _positive(d.rate):
                kind = INF_RATE
            elif _positive(d.dur):
                kind = INF_DUR
            t.append(d.time)
            a.append(d.amt)
            ra.append(d.rate)
            du.append(d.dur)
            cm.append(names.index(d.cmt))
            ki.append(kind)
            if d.ss == 1:
                ss = (d, kind)
        pad = k - len(t)
        t += [PAD_TIME] * pad
        a += [zero] * pad
        ra += [zero] * pad
        du += [zero] * pad
        cm += [0] * pad
        ki += [NOOP] * pad
        for c, v in zip(("time", "amt", "rate", "dur", "cmt", "kind"), (t, a, ra, du, cm, ki)):
            cols[c].append(v)
        if ss is None:
            vals = (0, PAD_TIME, 0.0, 0.0, 0.0, 1.0, 0, NOOP)
        else:
            d, kind = ss
            vals = (1, d.time, d.amt, d.rate, d.dur, d.ii, names.index(d.cmt), kind)
        for c, v in zip(ss_cols, vals):
            ss_cols[c].append(v)

    def stack(v, dt=dtype):
        # One host-side array when every value is concrete (the usual case: a cohort's
        # regimens compile in one numpy call); element-wise only when some amount or
        # time is traced (gradients with respect to doses).
        flat = v if not isinstance(v[0], list) else [x for row in v for x in row]
        if all(_concrete(x) for x in flat):
            s = jnp.asarray(np.asarray(v, dtype=dt))
        elif isinstance(v[0], list):
            s = jnp.stack([jnp.stack([jnp.asarray(x, dt) for x in row]) for row in v])
        else:
            s = jnp.stack([jnp.asarray(x, dt) for x in v])
        return s[0] if squeeze else s

    i32 = jnp.int32
    return EventTable(
        time=stack(cols["time"]),
        amt=stack(cols["amt"]),
        rate=stack(cols["rate"]),
        dur=stack(cols["dur"]),
        cmt=stack(cols["cmt"], i32),
        kind=stack(cols["kind"], i32),
        ss_on=stack(ss_cols["on"], i32),
        ss_time=stack(ss_cols["time"]),
        ss_amt=stack(ss_cols["amt"]),
        ss_rate=stack(ss_cols["rate"]),
        ss_dur=stack(ss_cols["dur"]),
        ss_ii=stack(ss_cols["ii"]),
        ss_cmt=stack(ss_cols["cmt"], i32),
        ss_kind=stack(ss_cols["kind"], i32),
        has_infusion=bool(has_inf),
        has_ss=bool(has_ss),
    )
