"""Sources of variability a real trial has, beyond the twins' own (between-patient) ones.

A twin is deterministic: without these a placebo arm's change from baseline is exactly
zero in every patient. Each source is optional (see ``docs/trials.md``, *Variability*):

- :class:`MeasurementError`: residual (measurement) error on an output, additive SD
  and/or proportional CV, drawn independently at every saved time, so that a baseline
  and a follow-up visit are measured independently, and every endpoint reading the
  same output at the same visit sees the same measurement;
- :class:`PlaceboResponse`: a placebo response / disease-progression time course added
  to an output in every arm, ``E_i * t / (t50 + t) + S_i * t`` with between-patient
  variability of ``E_i`` and ``S_i``;
- :class:`Dropout`: random (constant hazard) and outcome-dependent dropout, with the
  analysis population (completers or last observation carried forward);
- ``adherence``: each dose taken with probability ``p`` (per patient, per dose);
- :class:`OccasionVariability`: inter-occasion variability (IOV) of a parameter between
  visits: ``theta_ik = g^-1(g(theta_i) + kappa_ik)``, ``kappa_ik ~ N(0, sd**2)``
  independent per patient and occasion (Karlsson & Sheiner 1993), ``g`` the
  parameter's transform (log for positive parameters, so ``sd`` is about the CV), the
  parameter piecewise constant within each occasion (``twinjax.Piecewise``, LOCF).

All draws come from the trial's seed (same seed, same trial), one independent stream
per arm and per source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from ._check import INVALID, Problems, boolean, describe, number, ok, string

__all__ = ["Dropout", "MeasurementError", "OccasionVariability", "PlaceboResponse", "Variability"]

ANALYSES = ("completers", "locf")
ERROR_KEYS = {"output", "sd", "cv"}
PLACEBO_KEYS = {"output", "emax", "t50", "sd", "slope", "slope_sd"}
DROPOUT_KEYS = {"hazard", "analysis", "outcome"}
OUTCOME_KEYS = {"output", "hazard", "threshold", "direction", "change"}
IOV_KEYS = {"param", "sd", "cv", "occasions"}
VARIABILITY_KEYS = {"error", "placebo", "dropout", "adherence", "iov"}

# independent random streams (with the seed and the arm's index)
_STREAM_PLACEBO, _STREAM_ERROR, _STREAM_DROPOUT, _STREAM_ADHERENCE, _STREAM_IOV = 1, 2, 3, 4, 5


def rng_for(seed: int, arm: int, stream: int) -> np.random.Generator:
    """The generator of one source of one arm (deterministic given the trial's seed)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0x7A51, int(arm), stream]))


# ============================================================================ the sources
@dataclasses.dataclass(frozen=True)
class MeasurementError:
    """Residual error on ``output``: ``y_obs = y + sqrt(sd**2 + (cv*y)**2) * eps``.

    ``eps`` is standard normal, independent per patient and per saved time (so a
    baseline and a follow-up are measured independently).

    Arguments:
        output: the model output measured with error.
        sd: additive SD (the output's unit), >= 0.
        cv: proportional CV (a fraction, 0.1 = 10 %), >= 0.
    """

    output: str
    sd: float = 0.0
    cv: float = 0.0

    def __post_init__(self):
        probs = Problems()
        check_error(dataclasses.asdict(self), f"MeasurementError({self.output!r})", probs)
        probs.check()

    def apply(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        y = np.asarray(y, float)
        scale = np.sqrt(self.sd**2 + (self.cv * np.nan_to_num(y)) ** 2)
        return y + scale * rng.standard_normal(y.shape)


@dataclasses.dataclass(frozen=True)
class PlaceboResponse:
    """A placebo response / disease progression added to ``output`` in every arm.

    ``effect_i(t) = E_i * t / (t50 + t) + S_i * t`` with ``E_i ~ N(emax, sd**2)`` and
    ``S_i ~ N(slope, slope_sd**2)`` per patient (zero at time 0, the baseline).

    Arguments:
        output: the model output it is added to.
        emax: mean maximal placebo effect (the output's unit; negative lowers it).
        t50: time to half the maximal effect (model time unit), > 0.
        sd: between-patient SD of ``E_i``, >= 0.
        slope, slope_sd: linear disease progression per unit time (mean, SD >= 0).
    """

    output: str
    emax: float = 0.0
    t50: float = 1.0
    sd: float = 0.0
    slope: float = 0.0
    slope_sd: float = 0.0

    def __post_init__(self):
        probs = Problems()
        check_placebo(dataclasses.asdict(self), f"PlaceboResponse({self.output!r})", probs)
        probs.check()

    def effect(self, times: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, T)`` effects on the save ``times``."""
        t = np.asarray(times, float)
        e = self.emax + self.sd * rng.standard_normal(n)
        s = self.slope + self.slope_sd * rng.standard_normal(n)
        return e[:, None] * (t / (self.t50 + t))[None, :] + s[:, None] * t[None, :]


@dataclasses.dataclass(frozen=True)
class OccasionVariability:
    """Inter-occasion variability of parameter ``param`` between visits.

    Occasion ``k`` runs from ``occasions[k]`` to ``occasions[k + 1]`` (the last one to
    the end). On it the parameter is ``g^-1(g(theta_i) + kappa_ik)`` with ``kappa_ik ~
    N(0, sd**2)`` drawn per patient and occasion, ``g`` the parameter's transform
    (log, logit or identity, as for the between-patient variability), so a
    log-transformed parameter varies by a factor ``exp(kappa)``.

    Arguments:
        param: the model parameter (e.g. ``"pk.CL"``).
        sd: SD of ``kappa`` in the transformed coordinate, >= 0.
        cv: instead of ``sd``, for a log-transformed parameter: the CV of the
            occasion factor, ``sd = sqrt(log(1 + cv**2))``.
        occasions: the start time of each occasion (model time unit), increasing,
            the first one 0.
    """

    param: str
    sd: float = 0.0
    cv: float = 0.0
    occasions: Sequence[float] = (0.0,)

    def __post_init__(self):
        probs = Problems()
        check_iov(dataclasses.asdict(self), f"OccasionVariability({self.param!r})", probs)
        probs.check()
        object.__setattr__(self, "occasions", tuple(float(t) for t in self.occasions))

    @property
    def kappa_sd(self) -> float:
        return float(self.sd) if self.sd > 0 else float(np.sqrt(np.log1p(self.cv**2)))

    def piecewise(self, model, values, rng: np.random.Generator):
        """The parameter as a :class:`~twinjax.Piecewise` (LOCF at the occasion starts)
        for the ``(n,)`` patient values ``values``."""
        import jax.numpy as jnp

        from ..ode import Piecewise

        v = np.asarray(values, float)
        n, K = v.shape[0], len(self.occasions)
        kappa = self.kappa_sd * rng.standard_normal((n, K))
        q = model.param(self.param)
        if q.transform == "identity":
            vals = v[:, None] + kappa
        else:
            z = np.asarray(
                model.to_unconstrained({self.param: jnp.asarray(v)}, [self.param])[self.param]
            )
            vals = np.asarray(
                model.from_unconstrained({self.param: jnp.asarray(z[:, None] + kappa)})[self.param]
            )
        times = np.broadcast_to(np.asarray(self.occasions), (n, K))
        return Piecewise(times, vals, "locf")


@dataclasses.dataclass(frozen=True)
class Dropout:
    """Dropout: a patient leaves at the first time ``t`` with ``H(t) = E``, ``E ~ Exp(1)``.

    The hazard is ``hazard + outcome_hazard * [y(t) beyond threshold]``, with ``y`` the
    outcome output (with its placebo response, without measurement error; or its change
    from baseline with ``change=True``), held constant between the saved times where it
    is defined (per-beat outputs: between beat times).

    Arguments:
        hazard: random dropout, per unit time, >= 0 (fraction lost by ``t``:
            ``1 - exp(-hazard * t)``).
        analysis: ``"completers"`` (dropped patients are left out of the statistics) or
            ``"locf"`` (value, change and responder endpoints read at the last visit
            before the dropout: the last of the endpoint times ``time``/``baseline_time``
            not after it; window endpoints that end after it are missing).
        outcome_output, outcome_hazard, threshold, direction, change: the
            outcome-dependent part (``outcome_output=None``: none).
    """

    hazard: float = 0.0
    analysis: str = "completers"
    outcome_output: str | None = None
    outcome_hazard: float = 0.0
    threshold: float = 0.0
    direction: str = "above"
    change: bool = False

    def __post_init__(self):
        probs = Problems()
        check_dropout(_dropout_dict(self), "Dropout", probs)
        probs.check()

    def times(
        self, times: np.ndarray, vals: Mapping[str, np.ndarray], n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Per-patient dropout times ``(n,)``; ``inf`` for patients who complete."""
        t = np.asarray(times, float)
        h = np.full((n, t.size - 1), self.hazard)
        if self.outcome_output is not None and self.outcome_hazard > 0:
            y = _ffill(np.asarray(vals[self.outcome_output], float))
            if self.change:
                y = y - y[:, :1]
            with np.errstate(invalid="ignore"):
                hit = y < self.threshold if self.direction == "below" else y > self.threshold
            hit &= np.isfinite(y)
            h = h + self.outcome_hazard * hit[:, :-1]
        H = np.concatenate([np.zeros((n, 1)), np.cumsum(h * np.diff(t)[None, :], axis=1)], 1)
        e = rng.exponential(1.0, n)
        out = np.full(n, np.inf)
        for i in range(n):
            if e[i] < H[i, -1]:
                k = int(np.searchsorted(H[i], e[i], side="right"))  # H[k-1] <= e < H[k]
                out[i] = t[k - 1] + (e[i] - H[i, k - 1]) / h[i, k - 1]
        return out


def _ffill(y: np.ndarray) -> np.ndarray:
    """Carry the last finite value forward along time (NaN before the first)."""
    idx = np.where(np.isfinite(y), np.arange(y.shape[1])[None, :], 0)
    idx = np.maximum.accumulate(idx, axis=1)
    out = np.take_along_axis(y, idx, axis=1)
    seen = np.maximum.accumulate(np.isfinite(y), axis=1)
    return np.where(seen, out, np.nan)


def _dropout_dict(d: Dropout) -> dict:
    f = {"hazard": d.hazard, "analysis": d.analysis}
    if d.outcome_output is not None:
        f["outcome"] = {
            "output": d.outcome_output,
            "hazard": d.outcome_hazard,
            "threshold": d.threshold,
            "direction": d.direction,
            "change": d.change,
        }
    return f


@dataclasses.dataclass(frozen=True)
class Variability:
    """The trial's sources of variability (each optional; see the module).

    Arguments:
        errors: :class:`MeasurementError` per output (at most one per output).
        placebo: :class:`PlaceboResponse` list (added in every arm).
        dropout: a :class:`Dropout` or None.
        adherence: probability that each dose is taken (per patient and dose), in
            [0, 1]; None: every dose taken. Steady-state (``ss``) records are always
            taken.
        iov: :class:`OccasionVariability` per parameter (at most one per parameter).
    """

    errors: Sequence[MeasurementError] = ()
    placebo: Sequence[PlaceboResponse] = ()
    dropout: Dropout | None = None
    adherence: float | None = None
    iov: Sequence[OccasionVariability] = ()

    def __post_init__(self):
        probs = Problems()
        check_variability_objects(self, "variability", probs)
        probs.check()
        object.__setattr__(self, "errors", tuple(self.errors))
        object.__setattr__(self, "placebo", tuple(self.placebo))
        object.__setattr__(self, "iov", tuple(self.iov))

    @property
    def outputs(self) -> set[str]:
        """The outputs the sources read or modify."""
        out = {e.output for e in self.errors} | {p.output for p in self.placebo}
        if self.dropout is not None and self.dropout.outcome_output is not None:
            out.add(self.dropout.outcome_output)
        return out

    def output_problems(self, valid: Sequence[str], labels: Mapping[str, str]) -> list[str]:
        """Unknown outputs (``labels``: ``error``, ``placebo``, ``dropout`` prefixes)."""
        out = []
        items = [(labels["error"].format(i=i), e.output) for i, e in enumerate(self.errors)]
        items += [(labels["placebo"].format(i=i), p.output) for i, p in enumerate(self.placebo)]
        if self.dropout is not None and self.dropout.outcome_output is not None:
            items.append((labels["outcome"], self.dropout.outcome_output))
        for where, o in items:
            if o not in valid:
                out.append(f"{where}.output: unknown output {o!r}; valid: {list(valid)}")
        return out

    # ------------------------------------------------------------------ applying
    def regimens(self, regimen, n: int, seed: int, arm: int):
        """Per-patient regimens with missed doses (the shared regimen if adherence is off)."""
        if regimen is None or self.adherence is None or self.adherence >= 1.0:
            return regimen
        from ..dosing import Dose, Regimen

        rng = rng_for(seed, arm, _STREAM_ADHERENCE)
        records: list = []
        for d in regimen.doses:
            records.extend(d.expand() if isinstance(d, Dose) and d.ss == 0 else [d])
        doses = [i for i, d in enumerate(records) if isinstance(d, Dose) and d.ss == 0]
        taken = rng.random((n, len(doses))) < self.adherence
        out = []
        for j in range(n):
            recs = list(records)
            for k, i in enumerate(doses):
                if not taken[j, k]:  # a missed dose: same record, nothing given
                    recs[i] = dataclasses.replace(recs[i], amt=0.0, rate=0.0, dur=0.0)
            out.append(Regimen(recs))
        return out

    def occasion_params(self, model, params: Mapping, seed: int, arm: int) -> dict:
        """The patients' parameters with the IOV parameters as ``Piecewise`` values
        (the same dict if there is no IOV)."""
        if not self.iov:
            return dict(params)
        rng = rng_for(seed, arm, _STREAM_IOV)
        out = dict(params)
        for o in self.iov:
            out[o.param] = o.piecewise(model, params[o.param], rng)
        return out

    def add_placebo(self, times, vals: dict, seed: int, arm: int) -> dict:
        """The outputs with the placebo responses added (every arm)."""
        if not self.placebo:
            return vals
        rng = rng_for(seed, arm, _STREAM_PLACEBO)
        vals = dict(vals)
        for p in self.placebo:
            y = np.asarray(vals[p.output], float)
            vals[p.output] = y + p.effect(times, y.shape[0], rng)
        return vals

    def measure(self, vals: dict, seed: int, arm: int) -> dict:
        """The outputs as measured (residual error at every saved time)."""
        if not self.errors:
            return vals
        rng = rng_for(seed, arm, _STREAM_ERROR)
        vals = dict(vals)
        for e in self.errors:
            vals[e.output] = e.apply(vals[e.output], rng)
        return vals

    def dropout_times(self, times, vals: dict, n: int, seed: int, arm: int) -> np.ndarray:
        if self.dropout is None:
            return np.full(n, np.inf)
        return self.dropout.times(times, vals, n, rng_for(seed, arm, _STREAM_DROPOUT))


# ============================================================================ checks
def check_error(f: Mapping, where: str, probs: Problems) -> None:
    string(f.get("output"), f"{where}.output", probs)
    sd = number(f.get("sd", 0.0), f"{where}.sd", probs, lo=0)
    cv = number(f.get("cv", 0.0), f"{where}.cv", probs, lo=0)
    if ok(sd, cv) and sd == 0 and cv == 0:
        probs.add(where, "a measurement error needs sd > 0 or cv > 0")


def check_placebo(f: Mapping, where: str, probs: Problems) -> None:
    string(f.get("output"), f"{where}.output", probs)
    number(f.get("emax", 0.0), f"{where}.emax", probs)
    number(f.get("t50", 1.0), f"{where}.t50", probs, lo=0, lo_open=True)
    number(f.get("sd", 0.0), f"{where}.sd", probs, lo=0)
    number(f.get("slope", 0.0), f"{where}.slope", probs)
    number(f.get("slope_sd", 0.0), f"{where}.slope_sd", probs, lo=0)


def check_dropout(f: Mapping, where: str, probs: Problems) -> None:
    number(f.get("hazard", 0.0), f"{where}.hazard", probs, lo=0)
    string(f.get("analysis", "completers"), f"{where}.analysis", probs, choices=ANALYSES)
    o = f.get("outcome")
    if o is None:
        return
    w = f"{where}.outcome"
    if not isinstance(o, Mapping):
        probs.add(w, f"expected a table, got {describe(o)}")
        return
    for k in o:
        if k not in OUTCOME_KEYS:
            probs.add(w, f"unknown key {k!r}; allowed keys: {sorted(OUTCOME_KEYS)}")
    string(o.get("output"), f"{w}.output", probs)
    number(o.get("hazard", 0.0), f"{w}.hazard", probs, lo=0)
    if "threshold" not in o:
        probs.add(w, "an outcome-dependent dropout needs a threshold")
    else:
        number(o["threshold"], f"{w}.threshold", probs)
    string(o.get("direction", "above"), f"{w}.direction", probs, choices=("below", "above"))
    boolean(o.get("change", False), f"{w}.change", probs)


def check_iov(f: Mapping, where: str, probs: Problems) -> None:
    string(f.get("param"), f"{where}.param", probs)
    sd = number(f.get("sd", 0.0), f"{where}.sd", probs, lo=0)
    cv = number(f.get("cv", 0.0), f"{where}.cv", probs, lo=0)
    if ok(sd, cv):
        if sd == 0 and cv == 0:
            probs.add(where, "give sd (> 0) or cv (> 0)")
        elif sd > 0 and cv > 0:
            probs.add(where, "give sd or cv, not both")
    occ = f.get("occasions", (0.0,))
    if isinstance(occ, str) or not isinstance(occ, Sequence) or len(occ) == 0:
        probs.add(f"{where}.occasions", f"expected a non-empty list of times, got {describe(occ)}")
        return
    vals = [number(t, f"{where}.occasions[{i}]", probs, lo=0) for i, t in enumerate(occ)]
    if ok(*vals):
        if vals[0] != 0:
            probs.add(f"{where}.occasions", f"the first occasion must start at 0, got {vals[0]}")
        if any(b <= a for a, b in zip(vals, vals[1:])):
            probs.add(f"{where}.occasions", f"occasion start times must increase: {list(vals)}")


def check_adherence(v, where: str, probs: Problems) -> None:
    if v is not None:
        number(v, where, probs, lo=0, hi=1)


def check_variability_objects(v: Variability, where: str, probs: Problems) -> None:
    """The fields of a :class:`Variability` (Python API)."""
    for name, cls in (("errors", MeasurementError), ("placebo", PlaceboResponse)):
        items = getattr(v, name)
        if isinstance(items, (str, Mapping)) or not isinstance(items, (Sequence, tuple)):
            probs.add(f"{where}.{name}", f"expected a list, got {describe(items)}")
            continue
        for i, x in enumerate(items):
            if not isinstance(x, cls):
                probs.add(f"{where}.{name}[{i}]", f"expected a {cls.__name__}, got {describe(x)}")
    if v.dropout is not None and not isinstance(v.dropout, Dropout):
        probs.add(f"{where}.dropout", f"expected a Dropout or None, got {describe(v.dropout)}")
    check_adherence(v.adherence, f"{where}.adherence", probs)
    for i, x in enumerate(v.iov):
        if not isinstance(x, OccasionVariability):
            probs.add(f"{where}.iov[{i}]", f"expected an OccasionVariability, got {describe(x)}")
    pars = [x.param for x in v.iov if isinstance(x, OccasionVariability)]
    dup_p = sorted({q for q in pars if pars.count(q) > 1})
    if dup_p:
        probs.add(f"{where}.iov", f"one occasion variability per parameter, repeated: {dup_p}")
    errs = [e.output for e in v.errors if isinstance(e, MeasurementError)]
    dup = sorted({o for o in errs if errs.count(o) > 1})
    if dup:
        probs.add(f"{where}.errors", f"one measurement error per output, repeated: {dup}")


def variability_from_toml(d, probs: Problems):
    """A :class:`Variability` from the ``[variability]`` table (None if absent), or INVALID.

    Layout: ``[[variability.error]]`` (output, sd, cv), ``[[variability.placebo]]``
    (output, emax, t50, sd, slope, slope_sd), ``[variability.dropout]`` (hazard,
    analysis, and an ``outcome`` table: output, hazard, threshold, direction, change),
    ``adherence``, ``[[variability.iov]]`` (param, sd or cv, occasions).
    """
    if d is None:
        return None
    if not isinstance(d, Mapping):
        probs.add("[variability]", f"expected a table, got {describe(d)}")
        return INVALID
    n0 = len(probs)
    for k in d:
        if k not in VARIABILITY_KEYS:
            probs.add(
                "", f"unknown key {k!r} in [variability]; allowed keys: {sorted(VARIABILITY_KEYS)}"
            )
    lists: dict[str, list] = {}
    for key, keys, check in (
        ("error", ERROR_KEYS, check_error),
        ("placebo", PLACEBO_KEYS, check_placebo),
        ("iov", IOV_KEYS, check_iov),
    ):
        items = d.get(key, [])
        w0 = f"[variability.{key}]"
        if isinstance(items, Mapping):
            items = [items]
        if isinstance(items, str) or not isinstance(items, Sequence):
            probs.add(w0, f"expected an array of tables, got {describe(items)}")
            continue
        lists[key] = []
        for i, t in enumerate(items):
            w = f"{w0}[{i}]"
            if not isinstance(t, Mapping):
                probs.add(w, f"expected a table, got {describe(t)}")
                continue
            for k in t:
                if k not in keys:
                    probs.add(w, f"unknown key {k!r}; allowed keys: {sorted(keys)}")
            check(t, w, probs)
            lists[key].append(t)
    drop = d.get("dropout")
    if drop is not None:
        if not isinstance(drop, Mapping):
            probs.add("[variability.dropout]", f"expected a table, got {describe(drop)}")
        else:
            for k in drop:
                if k not in DROPOUT_KEYS:
                    probs.add(
                        "[variability.dropout]",
                        f"unknown key {k!r}; allowed keys: {sorted(DROPOUT_KEYS)}",
                    )
            check_dropout(drop, "[variability.dropout]", probs)
    check_adherence(d.get("adherence"), "[variability].adherence", probs)
    errs = [t.get("output") for t in lists.get("error", [])]
    dup = sorted({str(o) for o in errs if errs.count(o) > 1})
    if dup:
        probs.add("[variability.error]", f"one measurement error per output, repeated: {dup}")
    pars = [t.get("param") for t in lists.get("iov", [])]
    dup = sorted({str(o) for o in pars if pars.count(o) > 1})
    if dup:
        probs.add("[variability.iov]", f"one occasion variability per parameter, repeated: {dup}")
    if len(probs) > n0:
        return INVALID
    dropout = None
    if drop is not None:
        o = drop.get("outcome") or {}
        dropout = Dropout(
            hazard=float(drop.get("hazard", 0.0)),
            analysis=drop.get("analysis", "completers"),
            outcome_output=o.get("output"),
            outcome_hazard=float(o.get("hazard", 0.0)),
            threshold=float(o.get("threshold", 0.0)),
            direction=o.get("direction", "above"),
            change=bool(o.get("change", False)),
        )
    adherence = d.get("adherence")
    return Variability(
        errors=[MeasurementError(**t) for t in lists.get("error", [])],
        placebo=[PlaceboResponse(**t) for t in lists.get("placebo", [])],
        dropout=dropout,
        adherence=None if adherence is None else float(adherence),
        iov=[OccasionVariability(**t) for t in lists.get("iov", [])],
    )
