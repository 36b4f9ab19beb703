"""Individual fits: maximum a posteriori (MAP) estimation, batched over subjects.

For subject ``i`` with random effects ``eta_i`` (unconstrained coordinates of the
parameters with IIV, ``p_i = g^-1(g(TV_i) + eta_i)``) the objective is the negative
twice log posterior without constants (NONMEM's ``$ESTIMATION POSTHOC`` objective):

```
O_i(eta) = sum_j [ ((y_ij - m_ij) / s_ij)**2 + log s_ij**2 ] + eta' Omega^-1 eta
```

with ``m, s`` the mean and SD of the (transformed) observation from the residual
error model at the prediction ``f_ij(eta)``. It is minimised for all subjects at once
by a batched Levenberg-Marquardt / Fisher-scoring iteration: one forward-mode pass of
the batched simulation gives every subject's prediction and Jacobian ``df/deta``
(``k`` tangent directions for ``k`` random effects), each subject has its own damping,
step acceptance and convergence flag, and a subject whose simulation fails or whose
objective is not finite is flagged, never raised.

The curvature used is the expected (Fisher) information of the Gaussian likelihood,
``H = 2 [sum_j J_j' (dm_j**2 + 2 ds_j**2) / s_j**2 J_j + Omega^-1]``; at the mode
``(H / 2)^-1`` is the Laplace approximation of the posterior covariance of ``eta``
(Almquist et al. 2015). Standard errors on the natural scale follow by the delta method;
95 % intervals are the transformed intervals of the unconstrained coordinates.

References:
    - Sheiner LB, Beal SL. Bayesian individualization of pharmacokinetics: simple
      implementation and comparison with non-Bayesian methods. J Pharm Sci
      71:1344-1348, 1982.
    - Almquist J, Leander J, Jirstrand M. Using sensitivity equations for computing
      gradients of the FOCE and FOCEI approximations to the population likelihood.
      J Pharmacokinet Pharmacodyn 42:191-209, 2015.
    - Savic RM, Karlsson MO. Importance of shrinkage in empirical Bayes estimates for
      diagnostics. AAPS J 11:558-569, 2009.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from ..data import Dataset
from ..dosing._regimen import EventTable, Regimen, compile_regimens
from ..model import Model
from ..model._piecewise import Piecewise, initial_values, schedule, split_params
from ..population import Population
from ..population._population import shift_unconstrained
from ..solve._base import AbstractSolver
from ..solve._devices import per_device
from ..solve._engine import blocked
from ..solve._ensemble import Ensemble
from ..solve._simulate import _simulate_core
from ._censoring import CENSORING, censored_nll
from ._residual import ErrorModel

__all__ = ["FitResult", "fit_individual", "prepare_data"]

PRE_DOSE_EPS = 1e-7  # h: pre-dose observations are evaluated this long before the dose
# The objective is only as smooth as the ODE solver's adaptive step sequence: close to
# the mode its changes can fall below the solver's error and no step decreases it. A
# subject whose LM damping has then run away (or that reaches the iteration cap) still
# counts as converged when its Newton decrement G'H^-1G is below this: the decrement is
# twice the squared Mahalanobis distance to the mode, so 1e-3 puts the estimate within
# about 0.02 posterior SD of it (far below anything an interval or a forecast resolves).
NOISE_DECREMENT = 1e-3


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
        return data
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
        use = np.asarray(e.usable(jnp.asarray(dv)))
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
    if np.any(shift > 0):
        s = jnp.asarray(shift, dtype)
        ev = eqx.tree_at(lambda e: (e.time, e.ss_time), ev, (ev.time + s[:, None], ev.ss_time + s))
    # time-varying covariates: (N, C) tables on one grid (every record's time), shifted
    # like the event table so that doses and observations see their records' values
    varying = _change_tables(varying, shift)
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


# ============================================================================ priors
def as_population(model: Model, prior) -> Population:
    """A :class:`Population` from a Population or ``{"typical", "omega", "iiv"}``.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(prior, Population):
        if prior.model is not model and prior.model != model:
            raise ValueError("the population's model is not the model being fitted")
        return prior
    if isinstance(prior, Mapping):
        return Population(
            model,
            typical=prior.get("typical"),
            covariates=prior.get("covariates", ()),
            omega=prior.get("omega"),
            iiv=prior.get("iiv"),
        )
    raise TypeError("prior must be a twinjax Population or a dict(typical=, omega=, iiv=)")


def refuse_time_varying(pop: Population, covariates, varying=None, what: str = "fits") -> None:
    """Raise if a covariate effect of ``pop`` uses a covariate that changes within a
    subject and ``varying`` (``FitData.varying``) has no table of its values: a
    changing covariate must never be silently reduced to its first value."""
    tv = set(getattr(covariates, "attrs", {}).get("time_varying", [])) - set(varying or {})
    used = [c.covariate for c in pop.covariates if c.covariate in tv]
    if used:
        raise ValueError(
            f"covariate(s) {sorted(set(used))} change within subjects (time-varying); "
            f"{what} use one covariate value per subject and do not support time-varying "
            "covariates. Simulate with them through Dataset.piecewise (applied "
            "piecewise constant in time), fit them with fit_individual / fit_population, "
            "or use a baseline column of your own"
        )


def covariate_columns(covariates, varying=None) -> dict:
    """``{column: (N,) array}`` of the baseline table, with each time-varying
    covariate of ``varying`` as its :class:`~twinjax.Piecewise` instead."""
    cols: dict = {c: np.asarray(covariates[c], dtype=float) for c in covariates.columns}
    cols.update(varying or {})
    return cols


def typical_values(pop: Population, covariates, n: int, varying=None) -> dict:
    """Covariate-adjusted typical values ``{name: (n,) or Piecewise}`` of every model
    parameter; a parameter with an effect of a time-varying covariate (in ``varying``)
    is a :class:`~twinjax.Piecewise` on that covariate's change times."""
    refuse_time_varying(pop, covariates, varying)
    return pop.typical_values(covariate_columns(covariates, varying), n)


def baseline(tv: dict) -> dict:
    """``tv`` with every :class:`~twinjax.Piecewise` entry replaced by its value at
    time 0 (the subject's first record under NONMEM's convention)."""
    if not any(isinstance(v, Piecewise) for v in tv.values()):
        return tv
    rest, pw = split_params(tv)
    return {**rest, **initial_values(pw)}


# ============================================================================ numerics
class Spec(eqx.Module):
    """The static description of a fitting problem (model, solver, outputs, etas).

    ``output`` / ``error``: the (first) fitted output and its error model; with several
    outputs ``outputs`` and ``errors`` list them all (the residual SDs ``sigma`` are
    then the error models' SDs one after the other). ``censoring``: ``"none"`` (no
    censored records: the plain Gaussian objective), ``"m3"`` or ``"m4"``.
    """

    model: Model
    solver: AbstractSolver
    output: str = eqx.field(static=True)
    names: tuple = eqx.field(static=True)
    error: ErrorModel = eqx.field(static=True)
    outputs: tuple = eqx.field(static=True, default=())
    errors: tuple = eqx.field(static=True, default=())
    censoring: str = eqx.field(static=True, default="none")

    def all_outputs(self) -> tuple:
        return self.outputs or (self.output,)

    def all_errors(self) -> tuple:
        return self.errors or (self.error,)

    def sigma_parts(self, sigma) -> list:
        """``sigma`` split into one vector per error model."""
        parts, off = [], 0
        for e in self.all_errors():
            parts.append(sigma[off : off + len(e.names)])
            off += len(e.names)
        return parts


def make_spec(model, solver, names, errors, outputs, censoring="none") -> Spec:
    """A :class:`Spec` (error models with default SDs: the SDs are arguments)."""
    errs = tuple(ErrorModel(e.kind) for e in errors)
    if len(outputs) == 1:
        return Spec(model, solver, outputs[0], tuple(names), errs[0], censoring=censoring)
    return Spec(model, solver, outputs[0], tuple(names), errs[0], tuple(outputs), errs, censoring)


def _select(out, values: list):
    """Per record the value of its output: ``values[out]`` (a list of arrays)."""
    if len(values) == 1:
        return values[0]
    acc = values[0]
    for j in range(1, len(values)):
        acc = jnp.where(out == j, values[j], acc)
    return acc


def obs_moments(spec: Spec, f, sigma, out, slopes: bool = False):
    """Mean and SD (and with ``slopes`` their derivatives in ``f``) of each record's
    (transformed) observation, from its own output's error model."""
    parts = spec.sigma_parts(sigma)
    vals = [
        (e.moments_and_slopes(f, sg) if slopes else e.moments(f, sg))
        for e, sg in zip(spec.all_errors(), parts)
    ]
    return tuple(_select(out, [v[i] for v in vals]) for i in range(len(vals[0])))


def obs_transform(spec: Spec, y, out):
    """Each record's observation on the scale its error model is Gaussian."""
    return _select(out, [e.observed(y) for e in spec.all_errors()])


def _is_log(spec: Spec, out):
    kinds = [e.kind == "log" for e in spec.all_errors()]
    return _select(out, [jnp.asarray(k) for k in kinds]) & jnp.ones(out.shape, bool)


def extra_nll(spec: Spec, f, sigma, obs: Obs):
    """Per record (``(N, T)``): the censored records' ``-2 log P(interval)`` and, for M4,
    the ``+2 log Phi(m/s)`` conditioning of every record on a positive value (0 for a
    log error model, whose values are positive anyway). Elementwise in ``f``."""
    m, s = obs_moments(spec, f, sigma, obs.out)
    is_log = _is_log(spec, obs.out)
    m4 = spec.censoring == "m4"
    bound = obs_transform(spec, obs.dv, obs.out)
    lim = obs.limit
    lim_ok = jnp.isfinite(lim) & ~(is_log & (lim <= 0))
    lim_t = jnp.where(lim_ok, obs_transform(spec, jnp.where(lim_ok, lim, 1.0), obs.out), 0.0)
    left = obs.cens == 1
    lo = jnp.where(lim_ok, lim_t, -jnp.inf)
    if m4:  # the value is positive: the interval starts at 0 at most
        lo = jnp.where(is_log, lo, jnp.maximum(lo, 0.0))
    lo = jnp.where(left, lo, bound)
    hi = jnp.where(left, bound, jnp.where(lim_ok, lim_t, jnp.inf))
    cens = jnp.where(obs.cens != 0, censored_nll(m, s, lo, hi), 0.0)
    if m4:
        cond = jnp.where(is_log, 0.0, 2.0 * log_ndtr(m / s))
        cens = cens + cond
    return cens


def individual_params(spec: Spec, tv: dict, eta) -> dict:
    """``p = g^-1(g(TV) + eta)`` for the IIV parameters, ``TV`` for the others (a
    time-varying ``TV``, a :class:`~twinjax.Piecewise`, is shifted at every time)."""
    p = dict(tv)
    steady = [k for k in spec.names if not isinstance(tv[k], Piecewise)]
    if len(steady) == len(spec.names):
        z = spec.model.pack(tv, spec.names)
        p.update(spec.model.unpack(z + eta, spec.names))
        return p
    for j, k in enumerate(spec.names):
        p[k] = shift_unconstrained(spec.model, k, tv[k], eta[..., j])
    return p


def predict(spec: Spec, p: dict, ev, ts, out=None):
    """``(f, status)``: each record's fitted output at ``ts`` (N, T) and per-subject
    status; ``out`` (N, T) selects the output of each record (default: the first).
    Parameters may be :class:`~twinjax.Piecewise` ``(N, C)`` (time-varying)."""
    p, pw = split_params(p)
    sched = None
    if pw:
        p = {**p, **initial_values(pw)}
        sched = schedule(pw, ev.kind.shape[0], ts.dtype)
    _, outputs, status = _simulate_core(spec.model, spec.solver, p, ev, ts, sched=sched)
    names = spec.all_outputs()
    if out is None or len(names) == 1:
        return outputs[names[0]], status
    return _select(out, [outputs[o] for o in names]), status


def f_and_jac(spec: Spec, tv: dict, eta, ev, ts, out=None):
    """Predictions ``(N, T)``, Jacobians ``df/deta`` ``(N, T, k)`` and status (N,)."""
    k = eta.shape[-1]

    def f(e):
        return predict(spec, individual_params(spec, tv, e), ev, ts, out)

    def one(v):
        return jax.jvp(f, (eta,), (jnp.broadcast_to(v, eta.shape),), has_aux=True)

    if k == 0:
        fv, st = f(eta)
        return fv, jnp.zeros(fv.shape + (0,), fv.dtype), st
    fv, J, st = jax.vmap(one, out_axes=(0, -1, 0))(jnp.eye(k, dtype=eta.dtype))
    return fv[0], J, st[0]


def subject_terms(spec: Spec, f, J, y, mask, sigma):
    """Data part of the objective, its gradient and curvature, per subject.

    Uncensored records: ``((y - m)/s)^2 + log s^2`` with the expected (Fisher)
    curvature ``2 (m'^2 + 2 s'^2) / s^2 J J'``. Censored records (and M4's conditioning
    on positive values): ``-2 log P`` (:func:`extra_nll`), with the exact gradient and,
    as curvature, the exact second derivative in the prediction ``f`` times ``J J'``
    (the second derivative of ``f`` in eta neglected, as FOCE does); a record's total
    curvature coefficient is floored at 0 so the curvature stays positive semidefinite.

    Arguments:
        y: ``(N, T)`` observations or an :class:`Obs` (censoring flags, outputs).

    Returns:
        ``(O, G, H, m, s)``: ``(N,)``, ``(N, k)``, ``(N, k, k)`` and the ``(N, T)``
        mean and SD of the transformed observations.
    """
    obs = as_obs(y)
    m, s, dm, ds = obs_moments(spec, f, sigma, obs.out, slopes=True)
    yt = obs_transform(spec, obs.dv, obs.out)
    censored = spec.censoring != "none"
    gmask = (mask & (obs.cens == 0)) if censored else mask
    w = gmask.astype(f.dtype)
    r = jnp.where(gmask, (yt - m) / s, 0.0)
    logs2 = jnp.where(gmask, 2.0 * jnp.log(s), 0.0)
    O = jnp.sum(r**2 + logs2, axis=-1)
    Jm = dm[..., None] * J
    Js = ds[..., None] * J
    coef_m = jnp.where(gmask, -2.0 * r / s, 0.0)
    coef_s = jnp.where(gmask, (2.0 - 2.0 * r**2) / s, 0.0)
    G = jnp.einsum("nt,ntk->nk", coef_m, Jm) + jnp.einsum("nt,ntk->nk", coef_s, Js)
    inv_s2 = jnp.where(gmask, 1.0 / s**2, 0.0) * w
    if not censored:
        H = 2.0 * (
            jnp.einsum("nt,ntk,ntl->nkl", inv_s2, Jm, Jm)
            + 2.0 * jnp.einsum("nt,ntk,ntl->nkl", inv_s2, Js, Js)
        )
        return O, G, H, m, s
    ones = jnp.ones_like(f)

    def ell(ff):
        return extra_nll(spec, ff, sigma, obs)

    def d1(ff):
        return jax.jvp(ell, (ff,), (ones,))

    (l0, l1), (_, l2) = jax.jvp(d1, (f,), (ones,))
    l0 = jnp.where(mask, l0, 0.0)
    l1 = jnp.where(mask, l1, 0.0)
    c = jnp.where(mask, 2.0 * inv_s2 * (dm**2 + 2.0 * ds**2) + l2, 0.0)
    O = O + jnp.sum(l0, axis=-1)
    G = G + jnp.einsum("nt,ntk->nk", l1, J)
    H = jnp.einsum("nt,ntk,ntl->nkl", jnp.maximum(c, 0.0), J, J)
    return O, G, H, m, s


def posterior_terms(spec: Spec, tv, eta, ev, ts, y, mask, sigma, omega_inv):
    """Objective, gradient and curvature of ``-2 log posterior`` (no constants).

    Returns:
        ``(O, G, H, f, status, ok)``; ``O`` is ``inf`` where ``ok`` is False (failed
        simulation or non-finite values).
    """
    f, J, st = f_and_jac(spec, tv, eta, ev, ts, as_obs(y).out)
    O, G, H, _, _ = subject_terms(spec, f, J, y, mask, sigma)
    Oi = omega_inv
    O = O + jnp.einsum("nk,kl,nl->n", eta, Oi, eta)
    G = G + 2.0 * eta @ Oi
    H = H + 2.0 * Oi[None]
    ok = (st == 0) & jnp.isfinite(O) & jnp.all(jnp.isfinite(G), -1)
    ok = ok & jnp.all(jnp.isfinite(H), (-1, -2))
    O = jnp.where(ok, O, jnp.inf)
    return O, G, H, f, st, ok


def _solve(A, b):
    return jnp.linalg.solve(A, b[..., None])[..., 0]


LM_BLOCK = 256  # subjects per block of the batched LM on CPU (see ``lm_batched``)
LM_COMPACT = 4  # a block's unconverged subjects move to a batch this many times smaller
LM_COMPACT_MIN = 16  # smallest compacted batch


def lm_block_size(n: int, block: int | None = None) -> int | None:
    """Subjects per block for ``n`` subjects: ``LM_BLOCK`` on CPU, no blocking on
    accelerators (``block=0``) or when ``n`` fits in one block."""
    if block is None:
        block = LM_BLOCK if jax.default_backend() == "cpu" else 0
    if not block or n <= block:
        return None
    return int(block)


def _pad_rows(tree, n_to):
    """Pad every leaf's leading axis to ``n_to`` with copies of row 0."""

    def pad(a):
        n = a.shape[0]
        if n == n_to:
            return a
        return jnp.concatenate([a, jnp.broadcast_to(a[:1], (n_to - n,) + a.shape[1:])], axis=0)

    return jax.tree.map(pad, tree)


def _lm_core(spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv, max_iter, tol, compact):
    """The batched LM on one batch (see :func:`lm_batched`), with compaction."""
    k = eta0.shape[-1]
    eye = jnp.eye(k, dtype=eta0.dtype)
    O, G, H, f, st, ok = posterior_terms(spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv)

    def decrement(G, H):
        Hs = H + 1e-12 * eye[None]
        return jnp.einsum("nk,nk->n", G, _solve(Hs, G))

    dec = decrement(G, H)
    n = eta0.shape[0]
    conv = ok & (dec < tol)
    done = conv | ~ok
    lam = jnp.full((n,), 1e-4, eta0.dtype)
    niter = jnp.zeros((n,), jnp.int32)
    state = (eta0, O, G, H, f, st, ok, conv, done, lam, niter)
    data = (tv, ev, ts, y, mask)

    def make_loop(data, min_active):
        tv, ev, ts, y, mask = data

        def cond(c):
            go = jnp.any(~c[8]) & (c[11] < max_iter)
            if min_active > 0:
                go = go & (jnp.sum(~c[8], dtype=jnp.int32) > min_active)
            return go

        def body(c):
            eta, O, G, H, f, st, ok, conv, done, lam, niter, it = c
            dH = jnp.diagonal(H, axis1=-2, axis2=-1)
            A = H + lam[:, None, None] * (dH[:, :, None] * eye[None] + 1e-9 * eye[None])
            step = -_solve(A, G)
            active = ~done
            eta_c = jnp.where(active[:, None], eta + step, eta)
            O2, G2, H2, f2, st2, ok2 = posterior_terms(
                spec, tv, eta_c, ev, ts, y, mask, sigma, omega_inv
            )
            accept = active & ok2 & (O2 <= O)
            sel = lambda a, b: jnp.where(accept.reshape(accept.shape + (1,) * (a.ndim - 1)), a, b)
            eta, O, G, H, f, st = (
                sel(a, b) for a, b in zip((eta_c, O2, G2, H2, f2, st2), (eta, O, G, H, f, st))
            )
            lam = jnp.where(
                accept, jnp.maximum(lam * 0.2, 1e-12), jnp.where(active, lam * 10.0, lam)
            )
            dec = decrement(G, H)
            small_change = accept & (O - O2 >= 0) & (jnp.abs(c[1] - O) <= 1e-12 * (1 + jnp.abs(O)))
            conv = conv | (active & ((dec < tol) | small_change))
            stuck = active & (lam > 1e10)
            conv = conv | (stuck & (dec < jnp.maximum(1e3 * tol, NOISE_DECREMENT)))
            done = done | conv | stuck
            niter = niter + active.astype(jnp.int32)
            return (eta, O, G, H, f, st, ok, conv, done, lam, niter, it + 1)

        return cond, body

    # Compaction: subjects converge after different numbers of iterations (median 5,
    # max 13 on the 1,000-subject benchmark) and every iteration simulates the whole
    # batch. Once no more than n / LM_COMPACT are unconverged, they are gathered into
    # a batch of that size (the spare slots repeat a converged subject, which stays
    # as it is) and finish there; each subject's iteration is its own, so the results
    # do not depend on it.
    m = n // LM_COMPACT if compact else 0
    if m < LM_COMPACT_MIN:
        m = 0
    it = jnp.zeros((), jnp.int32)
    cond, body = make_loop(data, m)
    *state, it = jax.lax.while_loop(cond, body, (*state, it))
    if m:
        done = state[8]
        sel = jnp.nonzero(~done, size=m, fill_value=jnp.argmax(done))[0]
        sub = [a[sel] for a in state]
        data_c = jax.tree.map(lambda a: a[sel], data)
        cond_c, body_c = make_loop(data_c, 0)
        *sub, it = jax.lax.while_loop(cond_c, body_c, (*sub, it))
        state = [a.at[sel].set(b) for a, b in zip(state, sub)]
    eta, O, G, H, f, st, ok, conv, done, lam, niter = state
    ok = ok & jnp.isfinite(O)
    # at the iteration cap: a subject cycling within the solver's noise of its mode
    conv = conv | (~done & (decrement(G, H) < NOISE_DECREMENT))
    return dict(eta=eta, O=O, G=G, H=H, f=f, status=st, converged=conv & ok, ok=ok, n_iter=niter)


def _lm_blocked(spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv, max_iter, tol, block, compact):
    """:func:`_lm_core` block after block (``lax.map``) when ``block`` is set."""
    n = eta0.shape[0]

    def core(tv, eta0, ev, ts, y, mask):
        return _lm_core(spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv, max_iter, tol, compact)

    if block is None or n <= block:
        return core(tv, eta0, ev, ts, y, mask)
    return blocked(core, n, block, (tv, eta0, ev, ts, y, mask))


@eqx.filter_jit
def lm_batched(
    spec: Spec,
    tv,
    eta0,
    ev,
    ts,
    y,
    mask,
    sigma,
    omega_inv,
    max_iter,
    tol,
    *,
    block: int | None = None,
    compact: bool = True,
    devices: int = 1,
):
    """Batched Levenberg-Marquardt / Fisher scoring on the MAP objective.

    Every subject has its own damping, step acceptance and convergence flag; the
    batch is only the unit of vectorisation. On CPU the subjects run in blocks of
    ``LM_BLOCK`` (one after the other: a block's forward-mode simulation, 4x the state
    of a plain one, stays in cache, and a block stops when its own subjects have
    converged), and within a block the last unconverged subjects finish in a
    compacted batch (``compact``). With ``devices > 1`` the subjects are split over
    the first ``devices`` JAX devices by ``shard_map`` (each fits its own share; no
    communication); the batch size must then be a multiple of ``devices``.

    Arguments:
        spec: the problem.
        tv: ``{name: (N,)}`` typical values.
        eta0: ``(N, k)`` starting etas.
        ev, ts: event table and ``(N, T)`` evaluation times.
        y, mask: ``(N, T)`` observations and mask.
        sigma: residual SDs; omega_inv: ``(k, k)``.
        max_iter: iteration cap (a traced int); tol: Newton-decrement tolerance.
        block: subjects per block (default: :func:`lm_block_size`; 0: one batch).
        compact: finish a block's last subjects in a smaller batch.
        devices: number of devices to split the subjects over.

    Returns:
        A dict with ``eta, O, G, H, f, status, converged, ok, n_iter``.
    """
    n = eta0.shape[0]
    if devices <= 1:
        blk = lm_block_size(n, block)
        return _lm_blocked(
            spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv, max_iter, tol, blk, compact
        )
    if n % devices:
        raise ValueError(f"{n} subjects do not split over {devices} devices")
    blk = lm_block_size(n // devices, block)

    def local(tv, eta0, ev, ts, y, mask, sigma, omega_inv, max_iter):
        return _lm_blocked(
            spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv, max_iter, tol, blk, compact
        )

    return per_device(local, devices, (tv, eta0, ev, ts, y, mask), (sigma, omega_inv, max_iter))


@eqx.filter_jit
def _adam_batched(spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv, n_steps, lr):
    import optax

    opt = optax.adam(lr)

    def grad(eta):
        O, G, H, f, st, ok = posterior_terms(spec, tv, eta, ev, ts, y, mask, sigma, omega_inv)
        return jnp.where(ok[:, None], G, 0.0)

    def step(c, _):
        eta, s = c
        u, s = opt.update(grad(eta), s, eta)
        return (optax.apply_updates(eta, u), s), None

    (eta, _), _ = jax.lax.scan(step, (eta0, opt.init(eta0)), None, length=n_steps)
    return eta


@eqx.filter_jit
def _optx_batched(spec, tv, eta0, ev, ts, y, mask, sigma, omega_inv, max_steps, rtol):
    """vmap over subjects of ``optx.least_squares`` with Levenberg-Marquardt.

    Residuals: ``[(y - m) / s ; L^-1 eta]`` with ``Omega = L L'``. With an SD that
    depends on the prediction the SD is held at its value at the current prediction
    (the log-SD term is not a square), so only additive/log error give the exact MAP.
    Censored records have no residual form: :func:`fit_individual` refuses them here.
    """
    import optimistix as optx

    L = jnp.linalg.cholesky(jnp.linalg.inv(omega_inv))
    obs = as_obs(y)

    def one(tv_i, eta_i, ev_i, ts_i, y_i, m_i):
        tv1 = jax.tree.map(lambda a: a[None], tv_i)
        ev1 = jax.tree.map(lambda a: a[None], ev_i)

        def resid(e, _):
            p = individual_params(spec, tv1, e[None])
            f, _st = predict(spec, p, ev1, ts_i[None], y_i.out[None])
            m, s = obs_moments(spec, f[0], sigma, y_i.out)
            s = jax.lax.stop_gradient(s)
            r = jnp.where(m_i, (obs_transform(spec, y_i.dv, y_i.out) - m) / s, 0.0)
            return jnp.concatenate([r, jax.scipy.linalg.solve_triangular(L, e, lower=True)])

        solver = optx.LevenbergMarquardt(rtol=rtol, atol=rtol)
        sol = optx.least_squares(
            resid, solver, eta_i, max_steps=max_steps, throw=False, options=dict(jac="fwd")
        )
        return sol.value

    return jax.vmap(one)(tv, eta0, ev, ts, obs, mask)


# ============================================================================ result
@dataclasses.dataclass(eq=False)
class FitResult:
    """Individual (MAP) fits of ``N`` subjects: the twins.

    Attributes:
        ids: subject IDs.
        names: parameters with random effects (the fitted ones), order of ``etas``.
        params: ``{name: (N,)}`` MAP estimates of every model parameter (natural scale).
        etas: ``(N, k)`` MAP random effects (unconstrained coordinates).
        cov_eta: ``(N, k, k)`` Laplace posterior covariance of the etas.
        se: ``{name: (N,)}`` standard errors on the natural scale (delta method).
        ci95: ``{name: ((N,), (N,))}`` 95 % intervals (transformed from the
            unconstrained scale, so they stay inside the parameter's bounds).
        corr: ``(N, k, k)`` posterior correlations of the fitted parameters.
        objective: ``(N,)`` the MAP objective ``-2 log p(y, eta)`` without constants.
        converged: ``(N,)`` bool; False for a subject that failed or did not converge.
        status: ``(N,)`` simulation status code at the estimate (0 = ok).
        n_iter: ``(N,)`` iterations used.
        times, dv, mask: ``(N, T)`` the observations (``dv`` meaningful where ``mask``).
        pred: ``(N, T)`` population predictions (eta = 0).
        ipred: ``(N, T)`` individual predictions.
        iwres: ``(N, T)`` individual weighted residuals ``(y - ipred) / sd`` (on the
            log scale for a log error model; NaN where ``mask`` is False).
        shrinkage: ``{name: float}`` eta-shrinkage ``1 - SD(eta) / omega`` over the
            converged subjects.
        model, population, error, solver, output: what was fitted (with several
            outputs: the first output and its error model).
        outputs: the fitted outputs; errors: ``{output: ErrorModel}``.
        censoring: ``"none"``, ``"m3"`` or ``"m4"``; censored: ``(N, T)`` bool, the
            censored records (their ``dv`` is the limit, their IWRES NaN).
        typical: ``{name: (N,)}`` covariate-adjusted typical values; a parameter with
            an effect of a time-varying covariate is a :class:`~twinjax.Piecewise`
            ``(N, C)`` on the records' times.
        varying: ``{name: Piecewise}`` the individual estimates of those parameters
            over time; ``params``, ``se`` and ``ci95`` give their values at time 0
            (the first record's covariates, NONMEM's convention).
    """

    ids: list
    names: tuple
    params: dict
    etas: np.ndarray
    cov_eta: np.ndarray
    se: dict
    ci95: dict
    corr: np.ndarray
    objective: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    n_iter: np.ndarray
    times: np.ndarray
    dv: np.ndarray
    mask: np.ndarray
    pred: np.ndarray
    ipred: np.ndarray
    iwres: np.ndarray
    shrinkage: dict
    model: Model
    population: Population
    error: ErrorModel
    solver: AbstractSolver
    output: str
    data: FitData
    typical: dict
    outputs: tuple = ()
    errors: dict = dataclasses.field(default_factory=dict)
    censoring: str = "none"
    varying: dict = dataclasses.field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def censored(self) -> np.ndarray:
        """``(N, T)`` bool: the censored records used in the fit."""
        return self.data.censored

    def index(self, subject=None) -> int:
        """The position of ``subject`` (an ID; default: the only subject)."""
        if subject is None:
            if self.n != 1:
                raise ValueError(f"this fit has {self.n} subjects: name one with subject=ID")
            return 0
        if subject in self.ids:
            return self.ids.index(subject)
        raise KeyError(f"no subject {subject!r}; IDs are {self.ids}")

    def to_dataframe(self):
        """One row per subject: estimates, SEs, 95 % intervals, objective, flags."""
        import pandas as pd

        df = pd.DataFrame(index=pd.Index(self.ids, name="ID"))
        for k in self.names:
            df[k] = np.asarray(self.params[k])
            df[f"SE_{k}"] = np.asarray(self.se[k])
            df[f"LO95_{k}"] = np.asarray(self.ci95[k][0])
            df[f"HI95_{k}"] = np.asarray(self.ci95[k][1])
        for i, k in enumerate(self.names):
            df[f"ETA_{k}"] = self.etas[:, i]
        df["OBJ"] = self.objective
        df["converged"] = self.converged
        df["status"] = self.status
        df["n_iter"] = self.n_iter
        return df

    def observations(self):
        """A long table: ID, TIME, DV, PRED, IPRED, IWRES (used observations only),
        and ``OUTPUT`` (several outputs) and ``CENS`` (censored data; DV is then the
        limit)."""
        import pandas as pd

        rows = np.nonzero(self.mask)
        cols = dict(
            ID=np.asarray(self.ids, dtype=object)[rows[0]],
            TIME=self.times[rows],
            DV=self.dv[rows],
            PRED=self.pred[rows],
            IPRED=self.ipred[rows],
            IWRES=self.iwres[rows],
        )
        fd = self.data
        if len(self.outputs) > 1 and fd.out is not None:
            cols["OUTPUT"] = np.asarray(self.outputs, dtype=object)[fd.out[rows]]
        if self.censoring != "none" and fd.cens is not None:
            cols["CENS"] = fd.cens[rows]
        return pd.DataFrame(cols)

    def forecast(
        self, regimen, times, *, n_samples: int = 500, key=None, subject=None, level: float = 0.9
    ):
        """Forecast a new regimen for one subject; see :func:`twinjax.calibrate.forecast`."""
        from ._forecast import forecast

        return forecast(
            self, regimen, times, n_samples=n_samples, key=key, subject=subject, level=level
        )

    def __repr__(self) -> str:
        return (
            f"FitResult(n={self.n}, params={list(self.names)}, "
            f"converged={int(np.sum(self.converged))}/{self.n}, error={self.error!r})"
        )


# ============================================================================ driver
def _natural(model, names, z_tv, eta, cov):
    """Natural-scale estimates, delta-method SEs, 95 % intervals, correlations."""
    z = z_tv + eta
    sd = np.sqrt(np.maximum(np.diagonal(cov, axis1=-2, axis2=-1), 0.0))
    zj = jnp.asarray(z)
    val, slope = jax.jvp(lambda u: model.unpack(u, names), (zj,), (jnp.ones_like(zj),))
    lo = model.unpack(jnp.asarray(z - 1.959963984540054 * sd), names)
    hi = model.unpack(jnp.asarray(z + 1.959963984540054 * sd), names)
    se = {k: np.abs(np.asarray(slope[k])) * sd[:, i] for i, k in enumerate(names)}
    ci = {k: (np.asarray(lo[k]), np.asarray(hi[k])) for k in names}
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / (sd[:, :, None] * sd[:, None, :])
    return {k: np.asarray(v) for k, v in val.items()}, se, ci, corr


def fit_individual(
    model: Model,
    data,
    prior,
    error: ErrorModel | Mapping[str, ErrorModel] | None = None,
    *,
    output: str | None = None,
    solver: AbstractSolver | None = None,
    method: str = "lm",
    n_starts: int = 1,
    key=None,
    max_iter: int = 100,
    tol: float = 1e-8,
    adam_steps: int = 2000,
    adam_lr: float = 0.02,
    devices: int | None = None,
    block: int | None = None,
    censoring: str | None = None,
    lloq: float | None = None,
    dvid=None,
    output_column: str = "DVID",
) -> FitResult:
    """MAP fits of every subject of a dataset in one compiled, batched run.

    Arguments:
        model: the model.
        data: a :class:`~twinjax.data.Dataset` or a mapping (see :func:`prepare_data`).
        prior: a :class:`~twinjax.Population` (typical values, covariate effects and
            Omega of the parameters with IIV, which are the fitted ones) or a dict
            ``{"typical": {...}, "omega": ..., "iiv": [...]}``.
        error: the residual error model (default additive with SD 1), or one per
            output, ``{output: ErrorModel}``: several outputs fitted jointly (e.g.
            ``{"pk.C": ErrorModel("proportional"), "pd.E": ErrorModel("additive")}``),
            each record compared with the output its ``DVID`` (or ``output_column``)
            names.
        output: the model output compared with DV (default: the first output; not
            with a mapping ``error``).
        solver: a forward-mode differentiable solver: ``solvers.Ensemble()`` (default)
            or ``solvers.Diffrax(adjoint="forward")``.
        method: ``"lm"`` (batched Levenberg-Marquardt / Fisher scoring on the exact MAP
            objective; default), ``"optimistix"`` (``optx.least_squares`` with
            ``optx.LevenbergMarquardt`` on stacked residuals, vmapped over subjects) or
            ``"adam"`` (optax Adam on the exact objective, ``adam_steps`` steps). Every
            method ends with LM polishing iterations, which also give the flags and
            the Laplace covariance.
        n_starts: number of starts per subject (the first at eta = 0, the others drawn
            from N(0, Omega)); the best converged one is kept.
        key: PRNG key for the extra starts (default ``jax.random.key(0)``).
        max_iter: LM iteration cap; tol: convergence tolerance on the Newton decrement
            ``G' H^-1 G`` of the objective.
        adam_steps, adam_lr: Adam settings.
        devices: split the subjects of the LM over the first ``devices`` JAX devices
            (default: all of ``jax.devices()``; one on a plain CPU setup, see
            ``XLA_FLAGS=--xla_force_host_platform_device_count``); each device fits
            its own subjects. The estimates do not depend on it.
        block: subjects per block of the LM (default ``LM_BLOCK`` = 256 on CPU, one
            batch on accelerators; ``0``: one batch). The estimates do not depend on it.
        censoring: how censored records (``CENS``/``BLQ``/``LLOQ`` columns, or
            ``lloq``) enter: ``"m3"`` (default: ``-2 log P(Y < LLOQ)``), ``"m4"`` (M3
            with every record conditioned on a positive value), ``"drop"`` (left out;
            biased, for comparison).
        lloq: a constant LLOQ: observations below it are censored at it.
        dvid: ``{tag: output}`` mapping of the records' output tags (default: 1, 2,
            ... name the outputs in the order of ``error``; an output name names
            itself).
        output_column: the column tagging records with outputs: ``"DVID"`` or
            ``"CMT"``.

    Returns:
        A :class:`FitResult`; subjects that cannot be fitted are flagged
        (``converged`` False, NaN estimates where nothing finite was found), never
        raised.

    Raises:
        ValueError: bad arguments (unknown output or method, a prior without IIV, a
            record tagged with no fitted output), before anything is compiled.
    """
    pop = as_population(model, prior)
    if pop.n_iiv == 0:
        raise ValueError("the prior has no IIV: nothing to fit individually")
    outputs, errors = resolve_outputs(model, error, output)
    if method not in ("lm", "optimistix", "adam"):
        raise ValueError(f"method must be 'lm', 'optimistix' or 'adam', got {method!r}")
    solver = solver or Ensemble()
    fd = prepare_data(
        model,
        data,
        error,
        output=output,
        lloq=lloq,
        censoring=censoring,
        dvid=dvid,
        output_column=output_column,
    )
    cmode = fit_censoring(fd, censoring)
    if method == "optimistix" and cmode != "none":
        raise ValueError(
            "method='optimistix' fits stacked Gaussian residuals, which censored records "
            f"({int(fd.censored.sum())} here) do not have; use method='lm' or 'adam'"
        )
    spec = make_spec(model, solver, pop.iiv, errors, outputs, cmode)
    N, k = fd.n, pop.n_iiv
    tv = typical_values(pop, fd.covariates, N, fd.varying)
    omega = jnp.asarray(pop.omega)
    omega_inv = jnp.linalg.inv(omega)
    sigma = jnp.concatenate([e.sigma() for e in errors])
    ts = jnp.asarray(fd.t_eval)
    y = fd.obs()
    mask = jnp.asarray(fd.mask)
    S = max(int(n_starts), 1)

    def tile(a):
        return jnp.concatenate([a] * S, axis=0)

    eta0 = jnp.zeros((N, k))
    if S > 1:
        key = jax.random.key(0) if key is None else key
        L = jnp.linalg.cholesky(omega + 1e-12 * jnp.eye(k))
        draws = jax.random.normal(key, (S - 1, N, k)) @ L.T
        eta0 = jnp.concatenate([eta0, draws.reshape((S - 1) * N, k)], axis=0)
    tvS = jax.tree.map(tile, tv)
    evS = jax.tree.map(tile, fd.ev)
    tsS, yS, maskS = tile(ts), jax.tree.map(tile, y), tile(mask)
    if method == "adam":
        eta0 = _adam_batched(
            spec, tvS, eta0, evS, tsS, yS, maskS, sigma, omega_inv, int(adam_steps), float(adam_lr)
        )
        eta0 = jnp.where(jnp.isfinite(eta0), eta0, 0.0)
    elif method == "optimistix":
        eta0 = _optx_batched(
            spec, tvS, eta0, evS, tsS, yS, maskS, sigma, omega_inv, int(max_iter) * 4, 1e-10
        )
        eta0 = jnp.where(jnp.isfinite(eta0), eta0, 0.0)
    n_dev = len(jax.devices())
    n_dev = n_dev if devices is None else max(min(int(devices), n_dev), 1)
    n_all = eta0.shape[0]
    n_dev = min(n_dev, n_all)
    batch = (tvS, eta0, evS, tsS, yS, maskS)
    if n_dev > 1:  # pad to a multiple of the device count with copies of subject 0
        batch = _pad_rows(batch, -(-n_all // n_dev) * n_dev)
    out = lm_batched(
        spec, *batch, sigma, omega_inv, jnp.asarray(max_iter), tol, block=block, devices=n_dev
    )
    out = {k_: np.asarray(v)[:n_all] for k_, v in out.items()}
    if S > 1:
        Os = np.where(out["converged"], out["O"], np.inf).reshape(S, N)
        Os = np.where(
            np.isfinite(Os), Os, np.where(out["ok"], out["O"], np.inf).reshape(S, N) + 1e300
        )
        best = np.argmin(np.where(np.isnan(Os), np.inf, Os), axis=0)
        pick = best * N + np.arange(N)
        out = {k_: v[pick] for k_, v in out.items()}
    return _finish(spec, pop, fd, tv, out, omega, dict(zip(outputs, errors)))


def fit_censoring(fd: FitData, censoring: str | None) -> str:
    """The objective's censoring mode: ``"none"`` without censored records (and not
    M4), else ``"m3"`` (default) or ``"m4"``."""
    if censoring == "m4":
        return "m4"
    if censoring == "drop" or not fd.censored.any():
        return "none"
    return "m3"


def _finish(spec, pop, fd, tv, out, omega, errors) -> FitResult:
    if isinstance(errors, ErrorModel):
        errors = {spec.output: errors}
    error = next(iter(errors.values()))
    sigma = jnp.concatenate([e.sigma() for e in errors.values()])
    model, names = spec.model, spec.names
    k = len(names)
    ok = out["ok"]
    eta = np.where(ok[:, None], out["eta"], np.nan)
    H = out["H"]
    Hs = np.where(ok[:, None, None], H, np.eye(k))
    try:
        cov = 2.0 * np.linalg.inv(Hs)
    except np.linalg.LinAlgError:  # a singular curvature flags its subject, never raises
        cov = np.full_like(Hs, np.nan)
        ok = ok.copy()
        for i in range(Hs.shape[0]):
            try:
                cov[i] = 2.0 * np.linalg.inv(Hs[i])
            except np.linalg.LinAlgError:
                ok[i] = False
    out = dict(out, converged=out["converged"] & ok, ok=ok)
    eta = np.where(ok[:, None], eta, np.nan)
    cov = np.where(ok[:, None, None], cov, np.nan)
    tv0 = baseline(tv)  # time-varying typical values: estimates reported at time 0
    z_tv = np.asarray(model.pack(tv0, names))
    params_fit, se, ci, corr = _natural(model, names, z_tv, eta, cov)
    params = {kk: np.asarray(v) for kk, v in tv0.items()}
    params.update(params_fit)
    varying = {
        kk: jax.tree.map(np.asarray, v)
        for kk, v in individual_params(spec, tv, jnp.asarray(np.nan_to_num(eta))).items()
        if isinstance(v, Piecewise)
    }
    ts = jnp.asarray(fd.t_eval)
    zeros = jnp.zeros((fd.n, k))
    obs = fd.obs()
    pred, _ = predict(spec, individual_params(spec, tv, zeros), fd.ev, ts, obs.out)
    ipred = np.where(ok[:, None], out["f"], np.nan)
    m, s = obs_moments(spec, jnp.asarray(np.nan_to_num(ipred)), sigma, obs.out)
    yt = obs_transform(spec, obs.dv, obs.out)
    used = fd.mask & ~fd.censored & ok[:, None]
    iwres = np.where(used, np.asarray((yt - m) / s), np.nan)
    omega_sd = np.sqrt(np.diag(np.asarray(omega)))
    good = out["converged"]
    shrink = {}
    for i, kk in enumerate(names):
        e = eta[good, i]
        shrink[kk] = float(1.0 - np.std(e, ddof=1) / omega_sd[i]) if e.size > 1 else float("nan")
    return FitResult(
        ids=list(fd.ids),
        names=tuple(names),
        params=params,
        etas=eta,
        cov_eta=cov,
        se=se,
        ci95=ci,
        corr=corr,
        objective=np.where(ok, out["O"], np.nan),
        converged=np.asarray(out["converged"], bool),
        status=np.asarray(out["status"]),
        n_iter=np.asarray(out["n_iter"]),
        times=fd.times,
        dv=np.where(fd.mask, fd.dv, np.nan),
        mask=fd.mask,
        pred=np.asarray(pred),
        ipred=ipred,
        iwres=iwres,
        shrinkage=shrink,
        model=model,
        population=pop,
        error=error,
        solver=spec.solver,
        output=spec.output,
        data=fd,
        typical={kk: jax.tree.map(np.asarray, v) for kk, v in tv.items()},
        varying=varying,
        outputs=tuple(spec.all_outputs()),
        errors=dict(errors),
        censoring=spec.censoring,
    )
