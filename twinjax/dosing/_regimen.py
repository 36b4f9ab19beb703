"""Doses and regimens with NONMEM semantics, compiled to padded event arrays."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

# record kinds in a compiled event table (INF_CONST: a steady-state constant infusion,
# SS 1/2 with AMT 0, RATE > 0, II 0, which runs until a reset or an SS 1 record;
# INF_MRATE / INF_MDUR: NONMEM RATE -1 / -2, an infusion whose rate / duration is the
# compartment's R / D parameter)
NOOP, BOLUS, INF_RATE, INF_DUR, RESET, INF_CONST, INF_MRATE, INF_MDUR = 0, 1, 2, 3, 4, 5, 6, 7
#: ``Dose(rate=MODEL_RATE)``: NONMEM RATE -1, the rate is the compartment's R parameter.
MODEL_RATE = -1
#: ``Dose(rate=MODEL_DURATION)``: NONMEM RATE -2, the duration is the compartment's D.
MODEL_DURATION = -2
#: Implied earlier doses compiled per steady-state record whose duration is only known
#: at simulate time (RATE -1 / -2): enough for durations up to this many intervals.
SS_MODEL_HISTORY = 4
PAD_TIME = 1.0e9
#: History (implied earlier) doses kept per steady-state record beyond those that the
#: concrete duration needs; they cover lag times below this many intervals.
SS_EXTRA_HISTORY = 1


from ..ode._model import is_concrete as _concrete  # noqa: E402


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
            ``-1`` (NONMEM RATE -1, also ``MODEL_RATE``): the rate is the dosed
            compartment's modelled-rate parameter ``R`` and the duration ``F * amt / R``;
            ``-2`` (RATE -2, ``MODEL_DURATION``): the duration is its modelled-duration
            parameter ``D`` and the rate ``F * amt / D``. The model must declare them
            (``model.with_dose_modifiers(central=("R", "D"))`` gives ``R2``, ``D2``).
        dur: infusion duration (DUR); the rate is ``F * amt / dur``. Give ``rate`` or
            ``dur``, not both; with neither the dose is a bolus.
        ii: interdose interval (II) for ``addl`` and ``ss``.
        addl: number of additional doses (ADDL) every ``ii`` after this one.
        ss: steady-state flag (SS), as NONMEM's. ``1``: at ``time`` the system is at the
            periodic steady state of this dose repeated every ``ii`` (earlier doses,
            running infusions and pending doses are discarded); with a lag time the
            implied doses are lagged too, so the system is at steady state at ``time``
            and this dose arrives at ``time + lag``. Infusions longer than ``ii``
            overlap. ``2``: the steady-state amounts are added to the current state
            (superposition, meaningful for linear kinetics). With ``amt=0, rate>0,
            ii=0`` the dose is a steady-state constant infusion that runs until a reset
            or the next ``ss=1`` record.
        evid: 1 (dose) or 4 (reset the system, then dose).

    Bioavailability, lag time, modelled rate and duration are model parameters (see
    ``Model.dose_parameters`` and ``Model.with_dose_modifiers``), so they stay
    differentiable and vary per patient.
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
        if not self.modelled:
            if _concrete(self.rate) and np.ndim(self.rate) == 0 and float(self.rate) < 0:
                raise ValueError(
                    f"{where}: rate = {self.rate}; a rate is >= 0, or -1 (rate modelled by "
                    "the compartment's R parameter, NONMEM RATE -1) or -2 (duration "
                    "modelled by its D parameter, RATE -2)"
                )
            _num(self.rate, "rate", where)
        _num(self.dur, "dur", where)
        _num(self.ii, "ii", where)
        _num(self.addl, "addl", where, integer=True)
        if self.ss not in (0, 1, 2):
            raise ValueError(f"{where}: ss = {self.ss}; supported values are 0, 1 and 2")
        if self.evid not in (1, 4):
            raise ValueError(
                f"{where}: evid = {self.evid}; a Dose has evid 1 (dose) or 4 (reset and dose); "
                "use Reset for evid 3"
            )
        if _concrete(self.rate) and _concrete(self.dur) and self.rate != 0 and self.dur > 0:
            raise ValueError(f"{where}: give rate or dur for an infusion, not both")
        if self.modelled and _concrete(self.amt) and not self.amt > 0:
            raise ValueError(
                f"{where}: rate = {int(self.rate)} (modelled "
                f"{'rate' if self.rate == -1 else 'duration'}) needs amt > 0"
            )
        if self.is_constant_infusion:
            if _concrete(self.addl) and self.addl > 0:
                raise ValueError(
                    f"{where}: a steady-state constant infusion (amt 0, rate > 0, ii 0) "
                    "cannot have addl"
                )
            return
        if self.ss > 0 and _concrete(self.ii) and not self.ii > 0:
            raise ValueError(
                f"{where}: ss = {self.ss} needs an interdose interval ii > 0 (or amt 0, "
                "rate > 0 and ii 0 for a steady-state constant infusion)"
            )
        if _concrete(self.addl) and self.addl > 0 and _concrete(self.ii) and not self.ii > 0:
            raise ValueError(f"{where}: addl > 0 needs an interdose interval ii > 0")

    @property
    def modelled(self) -> int:
        """-1 or -2 for a RATE -1 / -2 record (rate / duration from the model), else 0."""
        if _concrete(self.rate) and np.ndim(self.rate) == 0 and float(self.rate) in (-1.0, -2.0):
            return int(self.rate)
        return 0

    @property
    def is_infusion(self) -> bool:
        return bool(self.modelled) or _positive(self.rate) or _positive(self.dur)

    @property
    def is_constant_infusion(self) -> bool:
        """A steady-state constant infusion: ss > 0, amt 0, rate > 0, ii 0 (all concrete)."""
        vals = (self.amt, self.rate, self.ii, self.dur)
        if self.ss == 0 or not all(_concrete(v) for v in vals):
            return False
        return float(self.amt) == 0 and float(self.rate) > 0 and float(self.ii) == 0

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
    INF_RATE, INF_DUR, RESET, INF_CONST, INF_MRATE (RATE -1), INF_MDUR (RATE -2);
    ``cmt`` indexes ``model.state_names``.
    Steady state: ``ss`` is the SS flag of each record (0, 1, 2) and ``ii`` its
    interval; ``ss_rec`` lists the record index of every steady-state record (``-1``
    pads). The implied earlier doses of a steady-state record that can still act after
    its time (overlapping infusions, lagged doses) are extra records with ``hist`` set
    to the index of their steady-state record (``-1`` for ordinary records). ``seq``
    orders events at equal times (the order of the records). ``ss_time`` is the time
    of each patient's first steady-state record (``PAD_TIME`` if none); the engine
    reads the times from ``time``.
    """

    time: jax.Array
    amt: jax.Array
    rate: jax.Array
    dur: jax.Array
    cmt: jax.Array
    kind: jax.Array
    ii: jax.Array
    ss: jax.Array
    hist: jax.Array
    seq: jax.Array
    ss_rec: jax.Array
    ss_time: jax.Array
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
        """Expanded single records sorted by time (a reset before a dose at equal times).

        As in NONMEM, an ``ss=1`` record cancels the additional (ADDL) doses of earlier
        records that are still pending at its time.
        """
        out: list[Dose | Reset] = []
        origin: list[int] = []  # index of the record in self.doses; -1 for resets/originals
        for i, d in enumerate(self.doses):
            if isinstance(d, Reset):
                out.append(d)
                origin.append(-1)
            else:
                if d.evid == 4:
                    out.append(Reset(d.time))
                    origin.append(-1)
                    d = dataclasses.replace(d, evid=1)
                rep = d.expand()
                out.extend(rep)
                origin.extend([-1] + [i] * (len(rep) - 1))
        if not all(_concrete(r.time) for r in out):
            return out
        order = sorted(
            range(len(out)),
            key=lambda j: (float(out[j].time), 0 if isinstance(out[j], Reset) else 1),
        )
        out = [out[j] for j in order]
        origin = [origin[j] for j in order]
        keep = [True] * len(out)
        for j, r in enumerate(out):
            if isinstance(r, Dose) and r.ss == 1:
                for m in range(j):  # ADDL repeats of earlier records still pending
                    src = origin[m]
                    if src >= 0 and float(out[m].time) >= float(r.time):
                        keep[m] = False
                for m in range(j + 1, len(out)):
                    src = origin[m]
                    if src >= 0 and float(self.doses[src].time) < float(r.time):
                        keep[m] = False
        return [r for r, k in zip(out, keep) if k]

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


def _history_count(d: Dose, kind: int, has_lag: bool) -> int:
    """How many implied earlier doses of steady-state record ``d`` to keep as records.

    Dose ``k`` (``k >= 1`` intervals earlier) still acts after the record's time when
    it is an infusion with ``k * ii < lag + duration``, or a dose arriving after the
    record's time (``k * ii <= lag``). The duration is known here unless it is
    ``F * amt / rate`` (taken with ``F = 1``) or a parameter (RATE -1 / -2: up to
    ``SS_MODEL_HISTORY`` intervals); lag times are assumed below
    ``SS_EXTRA_HISTORY`` intervals. The engine checks the count and flags a patient
    whose F or lag needs more (status NONFINITE) rather than return a wrong profile.
    """
    if kind == INF_CONST:
        return 0
    extra = SS_EXTRA_HISTORY if has_lag else 0
    if kind == BOLUS:
        return extra
    if kind in (INF_MRATE, INF_MDUR):  # the duration is a parameter
        return SS_MODEL_HISTORY + extra
    if not all(_concrete(x) for x in (d.ii, d.dur, d.rate, d.amt)):
        return 4 + extra
    ii = float(d.ii)
    length = float(d.dur) if kind == INF_DUR else float(d.amt) / float(d.rate)
    return int(np.ceil(length / ii)) + extra


def compile_regimens(
    regimens: Sequence[Regimen | None],
    model,
    *,
    n_records: int | None = None,
    dtype=None,
    squeeze: bool = False,
) -> EventTable:
    """Compile one regimen per patient into one padded, stacked :class:`EventTable`."""
    from ..ode._model import default_float

    dtype = dtype or default_float()
    names = list(model.state_names)
    from ..ode._model import dose_table

    dose_par = dose_table(model)
    none4 = (None, None, None, None)
    rows = []
    for r in regimens:
        r = r if r is not None else Regimen()
        r.validate(model)
        rows.append(r.records())

    def kind_of(d: Dose) -> int:
        if d.modelled:
            slot, what = (2, "rate") if d.modelled == -1 else (3, "duration")
            kind = "R" if d.modelled == -1 else "D"
            if dose_par.get(d.cmt, none4)[slot] is None:
                num = names.index(d.cmt) + 1
                raise ValueError(
                    f"Dose(cmt={d.cmt!r}, time={d.time}): rate = {d.modelled} (NONMEM RATE "
                    f"{d.modelled}: the infusion {what} is the compartment's {kind} "
                    f"parameter) but {type(model).__name__} has no {kind} parameter on "
                    f"{d.cmt!r}; declare it with model.with_dose_modifiers("
                    f"{{{d.cmt!r}: ({kind!r},)}}) (parameter {kind}{num}), or give the rate "
                    "or duration in the record"
                )
            return INF_MRATE if d.modelled == -1 else INF_MDUR
        if d.is_constant_infusion:
            if dose_par.get(d.cmt, none4)[0] is not None:
                raise ValueError(
                    f"Dose(cmt={d.cmt!r}, time={d.time}): a steady-state constant infusion "
                    f"(amt 0, rate > 0, ii 0) into a compartment with bioavailability "
                    f"{dose_par[d.cmt][0]!r} is not supported"
                )
            return INF_CONST
        if _positive(d.rate):
            return INF_RATE
        if _positive(d.dur):
            return INF_DUR
        return BOLUS

    # per patient: list of (time, amt, rate, dur, cmt, kind, ii, ss, hist, seq)
    tables = []
    ss_lists = []
    for rec in rows:
        tab: list[tuple] = []
        hist_rows: list[tuple] = []
        ss_idx: list[int] = []
        for pos, d in enumerate(rec):
            seq = 2 * pos + 1
            if isinstance(d, Reset):
                tab.append((d.time, 0.0, 0.0, 0.0, 0, RESET, 0.0, 0, -1, seq))
                continue
            kind = kind_of(d)
            c = names.index(d.cmt)
            tab.append((d.time, d.amt, d.rate, d.dur, c, kind, d.ii, d.ss, -1, seq))
            if d.ss > 0:
                ss_idx.append(pos)
                has_lag = dose_par.get(d.cmt, none4)[1] is not None
                for k in range(1, _history_count(d, kind, has_lag) + 1):
                    hist_rows.append(
                        (d.time - k * d.ii, d.amt, d.rate, d.dur, c, kind, d.ii, 0, pos, seq - 1)
                    )
        tables.append(tab + hist_rows)
        ss_lists.append(ss_idx)
    has_inf = any(
        r[5] in (INF_RATE, INF_DUR, INF_CONST, INF_MRATE, INF_MDUR) for tab in tables for r in tab
    )
    has_ss = any(ss_lists)
    k = max([len(tab) for tab in tables] + [1])
    if n_records is not None:
        if n_records < k:
            raise ValueError(f"n_records={n_records} is smaller than the longest regimen ({k})")
        k = n_records
    J = max([len(s) for s in ss_lists] + [1])

    names_cols = ("time", "amt", "rate", "dur", "cmt", "kind", "ii", "ss", "hist", "seq")
    pad_row = (PAD_TIME, 0.0, 0.0, 0.0, 0, NOOP, 0.0, 0, -1, 0)
    cols: dict[str, list] = {c: [] for c in names_cols}
    for tab in tables:
        padded = tab + [pad_row] * (k - len(tab))
        for i, col in enumerate(names_cols):
            cols[col].append([row[i] for row in padded])
    ss_rec = [s + [-1] * (J - len(s)) for s in ss_lists]
    ss_time = [tab[s[0]][0] if s else PAD_TIME for tab, s in zip(tables, ss_lists)]

    def stack(v, dt=dtype):
        # One host-side array when every value is concrete (the usual case: a cohort's
        # regimens compile in one numpy call); element-wise only when some amount or
        # time is traced (gradients with respect to doses).
        flat = v if not isinstance(v[0], list) else [x for row in v for x in row]
        if all(_concrete(x) for x in flat):  # on the host: no eager program per shape
            a = np.asarray(v, dtype=dt)
            return jax.device_put(a[0] if squeeze else a)
        if isinstance(v[0], list):
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
        ii=stack(cols["ii"]),
        ss=stack(cols["ss"], i32),
        hist=stack(cols["hist"], i32),
        seq=stack(cols["seq"], i32),
        ss_rec=stack(ss_rec, i32),
        ss_time=stack(ss_time),
        has_infusion=bool(has_inf),
        has_ss=bool(has_ss),
    )
