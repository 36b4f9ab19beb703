"""Inter-occasion variability (IOV) in fits: the occasion table of a dataset, the
checks of an ``iov={param: variance}`` argument, and the typical values on the
occasions.

Model (NONMEM's ``$OMEGA BLOCK(1) ... SAME`` per occasion, Monolix's "IOV"): a
parameter ``P`` with IOV is, on occasion ``k`` of subject ``i``,

```
P_ik = g^-1( g(TV_i) + eta_iP + kappa_ikP ),   kappa_ikP ~ N(0, omega_iov_P^2)
```

with ``g`` the parameter's transform (log, logit or identity, as for the IIV),
``eta_iP`` its IIV (0 if it has none) and the kappas independent across subjects,
occasions and parameters, with ONE variance per parameter shared by all occasions. The
kappas are extra random effects of each subject: the MAP objective has the prior term
``sum kappa^2 / omega_iov^2`` and FOCE-I's Laplace approximation integrates them out
together with the etas.

Data convention: an integer occasion column (default ``OCC``) on every record, dose
records included, non-decreasing along each subject's records (which are in time
order). Occasion ``k`` of a subject starts at the time of its first record (a dose or
an observation; a pre-dose observation listed before a dose at the same time counts
at its evaluation time, ``PRE_DOSE_EPS`` before the dose) and holds until the next
occasion starts (LOCF, right-continuous: the dose that opens an occasion, NONMEM's
usual practice, already sees its occasion's parameters; a trough sampled just before
that dose and tagged with the previous occasion sees the previous one). Subjects
with fewer occasions than the batch's largest number ``K`` get padding occasions that
start at ``PAD_TIME`` (after every record): their kappas touch no data, so their mode
is 0 and their Laplace factor is exactly 1 (their ``log omega_iov^2`` in ``log det
Omega`` and ``-log omega_iov^2`` in ``log det H/2`` cancel); the OFV does not depend on
``K``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from ..dosing._regimen import PAD_TIME
from ..ode import Model
from ..ode._piecewise import Piecewise

__all__ = ["Occasions", "check_iov", "occasion_table", "with_occasions"]


@dataclasses.dataclass(frozen=True, eq=False)
class Occasions:
    """The occasions of ``N`` subjects, padded to ``K`` per subject.

    Attributes:
        column: the data column read.
        times: ``(N, K)`` start time of each occasion (evaluation time scale of the
            fit, i.e. shifted like the event table); ``PAD_TIME`` for padding.
        labels: ``(N, K)`` the occasion values as in the data (-1 for padding).
        mask: ``(N, K)`` True for real occasions.
    """

    column: str
    times: np.ndarray
    labels: np.ndarray
    mask: np.ndarray

    @property
    def k(self) -> int:
        return int(self.times.shape[1])

    def subset(self, idx) -> Occasions:
        idx = np.asarray(idx, dtype=np.int64)
        return Occasions(self.column, self.times[idx], self.labels[idx], self.mask[idx])

    def padded_to(self, k: int) -> Occasions:
        """The same occasions padded to ``k >= K`` per subject (for tests and for
        batches fitted together)."""
        if k < self.k:
            raise ValueError(f"cannot pad {self.k} occasions to {k}")
        extra = k - self.k
        n = self.times.shape[0]
        return Occasions(
            self.column,
            np.concatenate([self.times, np.full((n, extra), PAD_TIME)], 1),
            np.concatenate([self.labels, np.full((n, extra), -1)], 1),
            np.concatenate([self.mask, np.zeros((n, extra), bool)], 1),
        )


def check_iov(model: Model, iov, pop=None, where: str = "iov") -> dict:
    """``{param: variance}`` from the user's ``iov`` mapping, checked.

    Values are variances of ``kappa`` in the parameter's transformed coordinate, like
    the IIV ``omega`` of a :class:`~twinjax.Population` (and NONMEM's ``$OMEGA``).

    Raises:
        TypeError: ``iov`` is not a mapping.
        ValueError: an unknown parameter (naming the allowed ones), a value that is not
            a finite number > 0, an identity-transformed parameter with a finite bound
            (an additive kappa could leave its bounds: give it a log or logit
            transform), or a parameter whose typical value changes with a
            time-varying covariate (checked in :func:`with_occasions`).
    """
    if iov is None:
        return {}
    if not isinstance(iov, Mapping):
        raise TypeError(
            f"{where} must be a mapping {{parameter: variance}}, got {type(iov).__name__}"
        )
    out: dict = {}
    for name, v in iov.items():
        if name not in model.param_names:
            raise ValueError(
                f"{where}[{name!r}]: unknown parameter; the model's parameters are "
                f"{list(model.param_names)}"
            )
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}[{name!r}]: the IOV variance must be a number > 0, got {v!r}"
            ) from None
        if not math.isfinite(x) or x <= 0:
            raise ValueError(
                f"{where}[{name!r}]: the IOV variance (omega_iov^2, in the parameter's "
                f"transformed coordinate) must be a finite number > 0, got {v!r}"
            )
        q = model.param(name)
        if q.transform == "identity" and (math.isfinite(q.lower) or math.isfinite(q.upper)):
            raise ValueError(
                f"{where}[{name!r}]: the parameter has bounds [{q.lower}, {q.upper}] but no "
                "transform (identity): an additive kappa could leave them. IOV needs a "
                "log or logit transform here (or an unbounded parameter)"
            )
        out[name] = x
    if not out:
        raise ValueError(f"{where} is empty: name at least one parameter, e.g. {{'CL': 0.1}}")
    return out


def occasion_table(data, column: str, shift, pre_dose_eps: float) -> Occasions:
    """The occasions of a :class:`~twinjax.data.Dataset` from its column ``column``.

    ``shift``: ``(N,)`` the time shift of each subject's event table (see
    :func:`~twinjax.calibrate.prepare_data`).

    Raises:
        ValueError: the column is missing, a value is missing or not an integer, or the
            occasion decreases along a subject's records (naming the line).
    """
    from ..data import Dataset

    if not isinstance(data, Dataset):
        raise ValueError(
            f"IOV needs the data as a twinjax Dataset with an occasion column "
            f"({column!r}) on every record, got {type(data).__name__}"
        )
    f = data.data
    lines = data.lines
    cols = {c.upper(): c for c in f.columns}
    if column not in f.columns and column.upper() not in cols:
        raise ValueError(
            f"IOV: the data have no occasion column {column!r} (columns: {list(f.columns)}); "
            "give occasion_column= the column numbering each record's occasion"
        )
    col = column if column in f.columns else cols[column.upper()]
    ids = list(f["ID"])
    raw = f[col].to_numpy(dtype=object)
    time = f["TIME"].to_numpy(dtype=float)
    evid = f["EVID"].to_numpy()
    occ = np.zeros(len(raw), np.int64)
    for r, v in enumerate(raw):
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = math.nan
        if not math.isfinite(x) or not x.is_integer():
            raise ValueError(
                f"{data.source}: line {int(lines[r])}, column {col}: occasion {v!r} is not an "
                "integer; every record (doses included) needs an integer occasion"
            )
        occ[r] = int(x)
    per: list = []
    for i, sid in enumerate(data.ids):
        rows = np.flatnonzero(np.asarray([x == sid for x in ids]))
        t, o, e = time[rows], occ[rows], evid[rows]
        drop = np.flatnonzero(np.diff(o) < 0)
        if drop.size:
            j = rows[drop[0] + 1]
            raise ValueError(
                f"{data.source}: line {int(lines[j])}: occasion {col}={occ[j]} of subject ID "
                f"{sid!r} is lower than {occ[rows[drop[0]]]} on the record before it; "
                "occasions must not decrease in time within a subject"
            )
        starts, labels = [], []
        for lab in np.unique(o):
            j = int(np.flatnonzero(o == lab)[0])
            s = t[j]
            if e[j] == 0 and np.any((t[j + 1 :] == t[j]) & np.isin(e[j + 1 :], (1, 3, 4))):
                s = s - pre_dose_eps  # a pre-dose observation opens the occasion
            starts.append(max(s + float(shift[i]), 0.0))
            labels.append(int(lab))
        per.append((np.maximum.accumulate(np.asarray(starts)), labels))
    K = max(len(p[1]) for p in per)
    N = len(per)
    times = np.full((N, K), PAD_TIME)
    lab = np.full((N, K), -1, np.int64)
    mask = np.zeros((N, K), bool)
    for i, (s, la) in enumerate(per):
        times[i, : len(s)] = s
        lab[i, : len(la)] = la
        mask[i, : len(la)] = True
    return Occasions(col, times, lab, mask)


def refuse_varying_iov(pop, names, varying) -> None:
    """IOV on a parameter whose typical value follows a time-varying covariate would
    need the two change-time tables merged: refused with a clear message."""
    tv = set(varying or {})
    for c in getattr(pop, "covariates", ()):
        if c.param in names and c.covariate in tv:
            raise ValueError(
                f"iov[{c.param!r}]: its typical value follows the time-varying covariate "
                f"{c.covariate!r}; IOV on such a parameter is not supported (use a baseline "
                "covariate, or put the IOV on another parameter)"
            )


def with_occasions(tv: dict, names, occ_times) -> dict:
    """``tv`` with each IOV parameter's typical value as a LOCF
    :class:`~twinjax.Piecewise` ``(N, K)`` on the occasion start times (the same
    value on every occasion: the kappas are added by ``individual_params``)."""
    if not names:
        return tv
    out = dict(tv)
    t = jnp.asarray(occ_times)
    for q in names:
        v = tv[q]
        if isinstance(v, Piecewise):
            raise ValueError(
                f"iov[{q!r}]: the typical value is already time-varying; IOV on it is not supported"
            )
        v = jnp.broadcast_to(jnp.asarray(v, t.dtype), (t.shape[0],))
        out[q] = Piecewise(t, jnp.broadcast_to(v[:, None], t.shape), "locf")
    return out


def iov_precision(var: dict | np.ndarray, names, k_occ: int):
    """``(m * K,)`` the prior precisions ``1 / omega_iov^2`` of the kappas, ordered
    parameter by parameter, occasion by occasion."""
    v = np.asarray([var[q] for q in names] if isinstance(var, Mapping) else var, float)
    return np.repeat(1.0 / v, k_occ)


def kappa_frame(fd, spec, names, kappa, params_occ) -> object:
    """One row per subject and real occasion: ``ID``, the occasion value, ``kappa_P``
    and the individual ``P`` on that occasion."""
    import pandas as pd

    occ = fd.occasions
    rows = []
    for i, sid in enumerate(fd.ids):
        for o in range(occ.k):
            if not occ.mask[i, o]:
                continue
            r = {"ID": sid, occ.column: int(occ.labels[i, o]), "START": float(occ.times[i, o])}
            for a, q in enumerate(names):
                r[f"kappa_{q}"] = float(kappa[i, a, o])
                r[q] = float(params_occ[q][i, o])
            rows.append(r)
    return pd.DataFrame(rows)
