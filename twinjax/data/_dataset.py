"""``Dataset``: a validated NONMEM dataset, per subject, ready for simulation and fitting.

Layout: the records are checked and normalised by :mod:`._nonmem`; the observation
columns (censoring, output tags) are read in ``_dataset_obs.py``; what a dataset hands
out per subject (:class:`Subject`, :class:`Padded`) is in ``_dataset_subject.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..dosing import Dose, Regimen, Reset
from ._dataset_obs import OBSERVATION_COLUMNS, observation_info
from ._dataset_subject import Padded as Padded
from ._dataset_subject import Subject as Subject
from ._nonmem import (
    FRAME_CONVENTION,
    LINE_CONVENTION,
    STANDARD,
    DatasetError,
    Problem,
    format_frame,
    normalize,
    resolve_compartments,
)


def _hashable(v):
    return float(v) if isinstance(v, (int, float, np.number)) else str(v)


def _is_number(x) -> bool:
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return True


def _scalar(v):
    return v.item() if isinstance(v, np.generic) else v


class Dataset:
    """A validated NONMEM-format dataset.

    Build one with :func:`twinjax.data.read_nonmem` (from a file or buffer) or directly
    from a pandas DataFrame: ``Dataset(frame, compartments={1: "depot"})``. The input is
    copied, never modified. Every record is validated; all problems are reported at
    once as a :class:`DatasetError` naming line and column.

    Arguments:
        data: the records, one row per record, with NONMEM columns (see
            :func:`read_nonmem`). Row ``i`` is reported as line ``i + 2``.
        compartments: CMT number -> compartment name mapping, list of names, or a Model
            (see :func:`read_nonmem`).
        covariates: covariate columns (default: every non-standard column except the
            observation columns below).
        units: optional units per column, for display (``{"TIME": "h", ...}``).
        name: a name for messages and ``repr``.

    Observation columns (never covariates; names matched case-insensitively), read
    for censored data and several outputs (see ``docs/calibration.md``):

    - ``CENS`` (nlmixr2, Monolix): 1 left-censored, the value is below DV (DV holds the
      LLOQ); -1 right-censored, the value is above DV; 0 observed. ``BLQ`` (NONMEM M3
      datasets): 1 below the LLOQ. ``LLOQ``: the limit of a flagged record (else DV);
      without a flag column an observation with ``DV < LLOQ`` is censored at its LLOQ.
      A flagged record with DV missing (``.`` or 0, so MDV defaults to 1) is still a
      censored observation when it has an LLOQ; an explicit ``MDV 1`` leaves it out.
    - ``LIMIT`` (nlmixr2, Monolix): the other end of a censoring interval.
    - ``DVID``: the output a record observes (a number or an output name).

    Raises:
        DatasetError: the data is not a valid NONMEM dataset.
        TypeError: ``data`` is not a DataFrame.

    Attributes:
        ids: subject IDs in file order.
        data: a copy of the normalised records: columns ``ID, TIME, DV, AMT, EVID, CMT,
            RATE, DUR, II, ADDL, SS, MDV`` (defaults filled in) then the other columns.
        covariates: baseline covariates per subject (a DataFrame indexed by ``ID``):
            the values on each subject's first record.
        time_varying: the covariates whose value changes within a subject; use
            :meth:`piecewise` to apply them in time.
        regimens: one :class:`twinjax.Regimen` per subject.
        units: the column units given, if any.
        source: where the data came from.
    """

    def __init__(
        self,
        data: pd.DataFrame,
        compartments=None,
        covariates: Sequence[str] | None = None,
        *,
        units: Mapping[str, str] | None = None,
        name: str | None = None,
    ):
        if not isinstance(data, pd.DataFrame):
            raise TypeError(
                f"Dataset expects a pandas DataFrame; got {type(data).__name__} (use "
                "read_nonmem for files)"
            )
        table = data.copy().reset_index(drop=True)
        lines = np.arange(len(table), dtype=np.int64) + 2
        self._setup(
            table,
            lines,
            compartments,
            covariates,
            source=name or "<DataFrame>",
            problems=[],
            header_line=1,
            units=units,
            convention=FRAME_CONVENTION,
        )

    @classmethod
    def _from_table(
        cls,
        table: pd.DataFrame,
        lines: np.ndarray,
        compartments,
        covariates,
        *,
        source: str,
        problems: list[Problem],
        header_line: int,
        units: Mapping[str, str] | None,
    ) -> Dataset:
        self = cls.__new__(cls)
        self._setup(
            table,
            lines,
            compartments,
            covariates,
            source=source,
            problems=problems,
            header_line=header_line,
            units=units,
            convention=LINE_CONVENTION,
        )
        return self

    def _setup(
        self,
        table,
        lines,
        compartments,
        covariates,
        *,
        source,
        problems,
        header_line,
        units,
        convention,
    ) -> None:
        comp = resolve_compartments(compartments)
        if covariates is None:  # every non-standard column except the observation ones
            names = [str(c).strip() for c in table.columns]
            if any(n.upper() in OBSERVATION_COLUMNS for n in names):
                covariates = [n for n in names if n.upper() not in STANDARD + OBSERVATION_COLUMNS]
        norm = normalize(
            table,
            lines,
            comp,
            covariates,
            source,
            problems=problems,
            header_line=header_line,
            convention=convention,
        )
        self.source = source
        self.units = dict(units or {})
        self._comp = comp
        self._frame = norm.frame
        self._lines = np.asarray(lines, dtype=np.int64)
        self._cov_names = list(norm.covariates)
        self._unresolved = norm.unresolved
        self._cmt_names = norm.cmt_names
        self._index()
        self._regimens = self._build_regimens(convention)
        self._obs = observation_info(table, self._frame, self._lines, source, convention)

    def _index(self) -> None:
        ids = self._frame["ID"].to_numpy()
        if len(ids) == 0:
            self._ids, self._slices = [], {}
            return
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        stops = np.r_[starts[1:], len(ids)]
        self._ids = [ids[s].item() for s in starts]
        self._slices = {
            k: (int(a), int(b)) for k, a, b in zip(self._ids, starts, stops, strict=True)
        }

    def _build_regimens(self, convention: str) -> list[Regimen] | None:
        if self._cmt_names is None:
            return None
        f = self._frame
        cols = {
            c: f[c].to_numpy() for c in ("TIME", "AMT", "EVID", "RATE", "DUR", "II", "ADDL", "SS")
        }
        problems, regimens = [], []
        for sid in self._ids:
            a, b = self._slices[sid]
            items: list[Dose | Reset] = []
            for i in range(a, b):
                e = int(cols["EVID"][i])
                try:
                    if e == 3:
                        items.append(Reset(float(cols["TIME"][i])))
                    elif e in (1, 4):
                        items.append(
                            Dose(
                                amt=float(cols["AMT"][i]),
                                cmt=self._cmt_names[i],
                                time=float(cols["TIME"][i]),
                                rate=float(cols["RATE"][i]),
                                dur=float(cols["DUR"][i]),
                                ii=float(cols["II"][i]),
                                addl=int(cols["ADDL"][i]),
                                ss=int(cols["SS"][i]),
                                evid=e,
                            )
                        )
                except ValueError as err:
                    problems.append(Problem(int(self._lines[i]), "AMT", str(err)))
            regimens.append(Regimen(items))
        if problems:
            raise DatasetError.from_problems(problems, self.source, convention)
        return regimens

    # ------------------------------------------------------------------ accessors

    @property
    def ids(self) -> list:
        """Subject IDs, in file order."""
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def data(self) -> pd.DataFrame:
        """A copy of the normalised records (NONMEM columns with defaults filled in)."""
        return self._frame.copy()

    @property
    def lines(self) -> np.ndarray:
        """The source line number of every record (header = line 1)."""
        return self._lines.copy()

    @property
    def compartments(self):
        """The ``compartments`` mapping (number -> name) or list given, or None."""
        return self._comp.given

    @property
    def covariate_names(self) -> list[str]:
        """The covariate columns."""
        return list(self._cov_names)

    @property
    def covariates(self) -> pd.DataFrame:
        """Baseline covariates: each subject's values on its first record, indexed by ID."""
        first = [self._slices[k][0] for k in self._ids]
        out = self._frame.iloc[first][["ID", *self._cov_names]].set_index("ID")
        return out.copy()

    @property
    def time_varying(self) -> list[str]:
        """The covariates whose value changes within at least one subject (a missing
        value on a later record is no change)."""
        f = self._frame
        out = []
        for c in self._cov_names:
            for sid in self._ids:
                a, b = self._slices[sid]
                vals = f[c].iloc[a:b]
                vals = vals[~vals.isna()]
                if len({_hashable(v) for v in vals}) > 1:
                    out.append(c)
                    break
        return out

    def piecewise(self, name: str, interpolation: str = "nocb"):
        """Covariate ``name`` as a :class:`twinjax.Piecewise`, one row per subject.

        Its change times are the times of every record of a subject (doses,
        observations, EVID 2 "other" records), its values those records' values:
        piecewise constant in between with NONMEM's convention by default (``"nocb"``:
        the record ending an interval supplies its value) or ``"locf"``. A missing
        value (``.``) takes the value that the convention carries to it (the next
        record's for NOCB, the previous one's for LOCF; then the other way at the ends).
        Rows are padded to a common length by repeating the last record.

        Use it for a parameter that the data carry (e.g. ``F2`` on each dose record),
        or map it through a covariate model:
        ``{"CL": ds.piecewise("WT").map(lambda wt: 2.5 * (wt / 70) ** 0.75)}``.

        Raises:
            KeyError: ``name`` is not a covariate.
            ValueError: a value is not a number, or a subject has no value at all.
        """
        from ..ode._piecewise import Piecewise

        if name not in self._cov_names:
            raise KeyError(f"{name!r} is not a covariate; covariates are {self._cov_names}")
        if interpolation not in ("nocb", "locf"):
            raise ValueError(f"interpolation must be 'nocb' or 'locf', got {interpolation!r}")
        f = self._frame
        rows_t, rows_v = [], []
        for sid in self._ids:
            a, b = self._slices[sid]
            raw = f[name].iloc[a:b]
            try:
                v = pd.to_numeric(raw, errors="raise").to_numpy(dtype=float)
            except (TypeError, ValueError):
                bad = [i for i, x in enumerate(raw) if not _is_number(x)][0]
                raise ValueError(
                    f"{self.source}: line {self._lines[a + bad]}, column {name}: "
                    f"{raw.iat[bad]!r} is not a number; a time-varying covariate must be "
                    "numeric"
                ) from None
            ser = pd.Series(v)
            ser = ser.bfill().ffill() if interpolation == "nocb" else ser.ffill().bfill()
            if ser.isna().any():
                raise ValueError(
                    f"{self.source}: ID {sid}: covariate {name} has no value on any record"
                )
            rows_t.append(f["TIME"].iloc[a:b].to_numpy(dtype=float))
            rows_v.append(ser.to_numpy())
        C = max(len(t) for t in rows_t)
        times = np.stack([np.pad(t, (0, C - len(t)), mode="edge") for t in rows_t])
        values = np.stack([np.pad(v, (0, C - len(v)), mode="edge") for v in rows_v])
        return Piecewise(times, values, interpolation)

    @property
    def observations(self) -> pd.DataFrame:
        """A copy of the observation records with a DV (EVID 0, MDV 0)."""
        f = self._frame
        return f[(f["EVID"] == 0) & (f["MDV"] == 0)].copy()

    @property
    def regimens(self) -> list[Regimen]:
        """One :class:`twinjax.Regimen` per subject (doses EVID 1/4, resets EVID 3).

        Raises:
            DatasetError: the compartments are CMT numbers and no names were given.
        """
        if self._regimens is None:
            raise DatasetError(f"{self.source}: regimens unavailable: {self._unresolved}")
        return list(self._regimens)

    def _pos(self, sid) -> int:
        if sid not in self._slices:
            raise KeyError(f"no subject with ID {sid!r}; IDs are {self._ids}")
        return self._ids.index(sid)

    def subject(self, sid) -> Subject:
        """The records of subject ``sid`` (observations, regimen, baseline covariates).

        Raises:
            KeyError: no such subject.
        """
        k = self._pos(sid)
        a, b = self._slices[sid]
        rec = self._frame.iloc[a:b]
        is_obs = rec["EVID"].to_numpy() == 0
        obs = rec[is_obs]
        info = {k: v[a:b][is_obs] for k, v in self._obs.items()}
        # an observation followed, at the same time, by a dose or reset record
        t_rec = rec["TIME"].to_numpy(dtype=float)
        ev_rec = rec["EVID"].to_numpy()
        pre = np.array(
            [
                bool(np.any((t_rec[j + 1 :] == t_rec[j]) & np.isin(ev_rec[j + 1 :], (1, 3, 4))))
                for j in np.flatnonzero(is_obs)
            ],
            dtype=bool,
        )
        return Subject(
            id=sid,
            times=obs["TIME"].to_numpy(dtype=float),
            dv=obs["DV"].to_numpy(dtype=float),
            mdv=info["mdv"].astype(np.int64),
            regimen=None if self._regimens is None else self._regimens[k],
            covariates={c: _scalar(rec[c].iat[0]) for c in self._cov_names},
            lines=self._lines[a:b].copy(),
            cens=info["cens"].astype(np.int8),
            lloq=info["lloq"].astype(float),
            limit=info["limit"].astype(float),
            dvid=info["dvid"],
            cmt=obs["CMT"].to_numpy(dtype=object),
            obs_lines=self._lines[a:b][is_obs].copy(),
            pre_dose=pre,
        )

    def padded(self, max_obs: int | None = None) -> Padded:
        """Observations of all subjects as ``(N, T)`` arrays for batched work.

        Every observation record (EVID 0) is a column, in file order; ``mask`` marks
        those with a DV (MDV 0). Rows are padded to ``T = max_obs`` (default: the largest
        number of observation records of a subject) by repeating the subject's last
        time (0 for a subject without observations), with ``dv`` 0 and ``mask`` False.

        Arguments:
            max_obs: the padded length ``T``; at least the largest per-subject count.

        Returns:
            A :class:`Padded` (numpy float64 / bool arrays, and the regimens).

        Raises:
            ValueError: ``max_obs`` is smaller than a subject's number of observations.
            DatasetError: regimens unavailable (unnamed compartments).
        """
        regimens = self.regimens
        subs = [self.subject(k) for k in self._ids]
        counts = [len(s.times) for s in subs]
        longest = max(counts, default=0)
        T = longest if max_obs is None else int(max_obs)
        if T < longest:
            k = int(np.argmax(counts))
            raise ValueError(
                f"max_obs={max_obs} is smaller than the {longest} observation records of "
                f"subject ID {self._ids[k]!r}"
            )
        N = len(subs)
        times = np.zeros((N, T))
        dv = np.zeros((N, T))
        mask = np.zeros((N, T), dtype=bool)
        cens = np.zeros((N, T), dtype=np.int8)
        lloq = np.full((N, T), np.nan)
        limit = np.full((N, T), np.nan)
        dvid = np.full((N, T), None, dtype=object)
        cmt = np.full((N, T), None, dtype=object)
        lines = np.zeros((N, T), dtype=np.int64)
        pre = np.zeros((N, T), dtype=bool)
        for j, s in enumerate(subs):
            m = len(s.times)
            if m:
                times[j, :m] = s.times
                times[j, m:] = s.times[-1]
                real = s.mdv == 0
                mask[j, :m] = real
                dv[j, :m] = np.where(real, np.nan_to_num(s.dv), 0.0)
                cens[j, :m] = np.where(real, np.asarray(s.cens), 0)
                lloq[j, :m] = np.where(real, np.asarray(s.lloq), np.nan)
                limit[j, :m] = np.where(real, np.asarray(s.limit), np.nan)
                dvid[j, :m] = s.dvid
                cmt[j, :m] = s.cmt
                lines[j, :m] = np.asarray(s.obs_lines)
                pre[j, :m] = np.asarray(s.pre_dose)
        return Padded(
            list(self._ids), times, dv, mask, regimens, cens, lloq, limit, dvid, cmt, lines, pre
        )

    # ------------------------------------------------------------------ derived datasets

    def subset(self, ids: Iterable) -> Dataset:
        """A new dataset with the subjects ``ids``, in the order given.

        Raises:
            KeyError: an ID is not in the dataset.
            ValueError: an ID is repeated.
        """
        ids = list(ids)
        unknown = [k for k in ids if k not in self._slices]
        if unknown:
            raise KeyError(f"no subjects with IDs {unknown}; IDs are {self._ids}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"subset: repeated IDs in {ids}")
        rows = np.concatenate(
            [np.arange(*self._slices[k]) for k in ids] or [np.zeros(0, dtype=np.int64)]
        ).astype(np.int64)
        new = Dataset.__new__(Dataset)
        new.source = self.source
        new.units = dict(self.units)
        new._comp = self._comp
        new._frame = self._frame.iloc[rows].reset_index(drop=True)
        new._lines = self._lines[rows]
        new._cov_names = list(self._cov_names)
        new._unresolved = self._unresolved
        new._cmt_names = None if self._cmt_names is None else self._cmt_names[rows]
        new._obs = {k: v[rows] for k, v in self._obs.items()}
        new._index()
        new._regimens = (
            None if self._regimens is None else [self._regimens[self._ids.index(k)] for k in ids]
        )
        return new

    @property
    def censored(self) -> pd.DataFrame:
        """The censored observation records (see :class:`Dataset`): ``ID, TIME, DV, CENS,
        LLOQ, LIMIT`` and the record's line."""
        o = self._obs
        sel = (o["cens"] != 0) & (o["mdv"] == 0)
        f = self._frame[sel]
        return pd.DataFrame(
            dict(
                ID=f["ID"].to_numpy(),
                TIME=f["TIME"].to_numpy(),
                DV=f["DV"].to_numpy(),
                CENS=o["cens"][sel],
                LLOQ=o["lloq"][sel],
                LIMIT=o["limit"][sel],
                line=self._lines[sel],
            )
        )

    # ------------------------------------------------------------------ output

    def to_csv(self, path=None) -> str | None:
        """Write the dataset as a NONMEM CSV (all standard columns, ``.`` for missing).

        Reading the file back with the same ``compartments`` gives an equal dataset.

        Arguments:
            path: a file path, a writable text buffer, or None.

        Returns:
            The CSV text when ``path`` is None, else None.
        """
        text = format_frame(self._frame)
        if path is None:
            return text
        if hasattr(path, "write"):
            path.write(text)
        else:
            Path(path).write_text(text, encoding="utf-8")
        return None

    def equals(self, other: Dataset) -> bool:
        """True when both datasets hold the same records (line numbers not compared)."""
        return isinstance(other, Dataset) and self._frame.equals(other._frame)

    def __repr__(self) -> str:
        f = self._frame
        n_obs = int(((f["EVID"] == 0) & (f["MDV"] == 0)).sum())
        n_dose = int(f["EVID"].isin([1, 4]).sum())
        parts = [
            f"{len(self)} subjects",
            f"{len(f)} records ({n_obs} observations, {n_dose} doses)",
        ]
        if self._cov_names:
            parts.append(f"covariates {self._cov_names}")
        if self._comp.by_number or self._comp.names:
            parts.append(f"compartments {self._comp.describe()}")
        if self.units:
            parts.append("units " + ", ".join(f"{k} {v}" for k, v in self.units.items()))
        return f"Dataset({self.source!r}: " + "; ".join(parts) + ")"
