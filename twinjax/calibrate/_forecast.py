"""Using a twin: forecasts with prediction intervals, and dose optimisation by gradient."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, TypedDict

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _executables
from ..dosing import Dose, Regimen
from ..dosing._regimen import NOOP, compile_regimens
from ..ode._model import default_float
from ..ode._piecewise import Piecewise
from ..solve._simulate import check_times, simulate, simulate_core
from ._data import EVENT_BUCKET_MIN, RECORD_BUCKET_MIN, pad_axis, pad_events, shape_bucket
from ._terms import Spec, individual_params
from ._uncertainty import (
    check_occasion,
    draw_random_effects,
    occasion_layout,
    posterior_samples,
    subject_posterior,
)

if TYPE_CHECKING:
    from ._map import FitResult

__all__ = ["DoseResult", "Forecast", "forecast", "optimise_dose"]


class DoseKwargs(TypedDict, total=False):
    """Optional keyword arguments of :class:`~twinjax.dosing.Dose`."""

    dur: float


_DoseKwargs = DoseKwargs  # the earlier name (calibrate/_posterior.py imports it)


@dataclasses.dataclass(eq=False)
class Forecast:
    """A forecast of one subject under a regimen.

    Attributes:
        times: ``(T,)`` forecast times.
        map: ``(T,)`` prediction at the MAP estimate.
        median: ``(T,)`` median over posterior samples.
        lower, upper: ``(T,)`` the ``level`` interval of the prediction from parameter
            uncertainty (the Laplace posterior).
        pi_lower, pi_upper: ``(T,)`` the ``level`` prediction interval of a new
            observation (parameter uncertainty plus residual error).
        samples: ``(n_samples, T)`` predictions of the posterior samples.
        level: the interval's coverage.
    """

    times: np.ndarray
    map: np.ndarray
    median: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    pi_lower: np.ndarray
    pi_upper: np.ndarray
    samples: np.ndarray
    level: float

    @classmethod
    def from_draws(cls, times, map_pred, f, y, level: float) -> Forecast:
        """The forecast of predictions ``f`` ``(S, T)`` over parameter draws and their
        noisy versions ``y``: medians and ``level`` intervals over the draws."""
        a = (1 - level) / 2
        q = lambda x, p: np.nanquantile(x, p, axis=0)  # noqa: E731
        return cls(
            times=np.asarray(times, float),
            map=map_pred,
            median=q(f, 0.5),
            lower=q(f, a),
            upper=q(f, 1 - a),
            pi_lower=q(y, a),
            pi_upper=q(y, 1 - a),
            samples=f,
            level=level,
        )

    def to_dataframe(self):
        """The forecast as a table indexed by time."""
        import pandas as pd

        return pd.DataFrame(
            dict(
                MAP=self.map,
                median=self.median,
                lower=self.lower,
                upper=self.upper,
                pi_lower=self.pi_lower,
                pi_upper=self.pi_upper,
            ),
            index=pd.Index(self.times, name="TIME"),
        )


def _check_n_samples(n_samples) -> None:
    """Refuse an ``n_samples`` that is not an integer >= 1 (before anything compiles)."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")


def forecast(
    fit: FitResult,
    regimen: Regimen,
    times,
    *,
    n_samples: int = 500,
    key=None,
    subject=None,
    level: float = 0.9,
    occasion: str = "new",
) -> Forecast:
    """Forecast a new regimen for one fitted subject, with prediction intervals.

    Parameter sets are drawn from the subject's Laplace posterior, simulated in one
    batch under ``regimen``, and residual error is added for the prediction interval.

    A fit with inter-occasion variability (``fit.iov``): with ``occasion="new"`` (the
    default; NONMEM's and Monolix's convention) the regimen is a new occasion. The
    point forecast (``map``) uses the subject's ``eta_hat`` and ``kappa = 0``; every
    other draw adds, to its eta from the posterior, a kappa of each IOV parameter drawn
    from ``N(0, omega_iov^2)`` (one per draw, held over the whole forecast), so the
    intervals include the occasion-to-occasion variability. With ``occasion="last"``
    the regimen continues the subject's last observed occasion: the point forecast uses
    ``eta_hat`` and that occasion's ``kappa_hat``, and the draws take ``(eta, kappa)``
    jointly from their Laplace posterior. See
    :func:`~twinjax.calibrate.posterior_samples`.

    Arguments:
        fit: a :class:`FitResult`.
        regimen: the regimen to forecast.
        times: ``(T,)`` output times.
        n_samples: number of posterior samples.
        key: a JAX PRNG key (default ``jax.random.key(0)``).
        subject: the subject ID (default: the only one).
        level: coverage of the intervals (0.9 for 5-95 %).
        occasion: ``"new"`` or ``"last"`` (no effect without IOV).

    Returns:
        A :class:`Forecast`.

    Raises:
        ValueError: the subject's fit failed, a bad level, ``n_samples`` or
            ``occasion``.
    """
    check_occasion(occasion, "forecast")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    _check_n_samples(n_samples)
    key = jax.random.key(0) if key is None else key
    k1, k2 = jax.random.split(key)
    varying = any(isinstance(v, Piecewise) for v in fit.typical.values())
    if varying or not isinstance(regimen, Regimen) or np.ndim(times) != 1:
        # time-varying typical values, event tables, per-sample times: the general path
        params, _ = posterior_samples(fit, n_samples, k1, subject, occasion=occasion)
        res = simulate(fit.model, params, regimen, times, solver=fit.solver, check=False)
        f = np.asarray(res[fit.output])
    else:
        f = _forecast_bucketed(fit, regimen, times, int(n_samples), k1, subject, occasion)
    y = np.asarray(_executables.call(_noise, fit.error, k2, f))
    return Forecast.from_draws(times, f[0], f, y, level)


def _forecast_bucketed(
    fit: FitResult, regimen: Regimen, times, n: int, key, subject, occasion: str = "new"
):
    """The ``(n, T)`` predictions of ``n`` Laplace posterior samples of one subject
    (the first the MAP estimate) under ``regimen`` on ``occasion``: as
    ``posterior_samples(..., occasion=occasion)`` followed by ``simulate``, in one program
    whose times and event rows are padded to shape buckets (a new number of times or
    doses within a bucket reuses it)."""
    i, eta_hat, L = subject_posterior(fit, subject)
    names, km, lke, lkk, A = occasion_layout(fit, occasion, fit.ids[i])
    dtype = default_float()
    ts = check_times(np.asarray(times, float), dtype)
    T = ts.shape[0]
    ts = pad_axis(np.asarray(ts), shape_bucket(T, RECORD_BUCKET_MIN), 0, last=True)
    ev = compile_regimens([regimen], fit.model, dtype=dtype)
    ev = pad_events(ev, shape_bucket(ev.time.shape[-1], EVENT_BUCKET_MIN))
    tv = {kk: np.asarray(v)[i] for kk, v in fit.typical.items()}
    spec = Spec(fit.model, fit.solver, fit.output, names, fit.error)
    f = _executables.call(
        _forecast_program, spec, tv, eta_hat, L, (km, lke, lkk), A, ev, ts, key, n
    )
    return np.asarray(f)[:, :T]


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # tests count traces
def _forecast_program(spec: Spec, tv: dict, eta_hat, L, kap, A, ev, ts, key, n: int):
    """Posterior samples (``eta_hat + z L'``, ``z[0] = 0``; with IOV plus the
    occasion's kappas ``kappa_mean + z Lke' + z_kappa Lkk'``, ``kap = (kappa_mean, Lke,
    Lkk)``, see ``draw_random_effects``) simulated under ``ev`` at the shared times
    ``ts``; ``(n, T)`` predictions of the fitted output."""
    km, lke, lkk = kap
    etas, _, _ = draw_random_effects(key, n, eta_hat, L, km, lke, lkk, A)
    rows = {kk: jnp.broadcast_to(v, (n,)) for kk, v in tv.items()}
    params = individual_params(spec, rows, etas)
    p, _ = spec.model.complete(params, dtype=ts.dtype, check=False)
    p = {kk: jnp.broadcast_to(v, (n,)) for kk, v in p.items()}
    evn = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape[1:]), ev)
    _, out, _ = simulate_core(spec.model, spec.solver, p, evn, ts[None])
    return out[spec.output]


@eqx.filter_jit
def _noise(error, key, f):
    """Observations drawn around ``f`` (one program; see ``ErrorModel.sample``)."""
    return error.sample(key, f)


# ============================================================================ dosing
@dataclasses.dataclass(eq=False)
class DoseResult:
    """The outcome of :func:`optimise_dose`.

    Attributes:
        dose: the optimised dose amount.
        interval: the dosing interval (optimised when asked).
        value: the target metric at the optimum (trough, AUC over the last interval,
            Cmax, or the fraction of time in range), at the MAP parameters.
        in_window: whether the target lies inside the window (for time in range:
            whether the fraction reaches ``min_fraction``).
        regimen: the optimised :class:`~twinjax.Regimen`.
        history: the loss at every gradient step.
    """

    dose: float
    interval: float
    value: float
    in_window: bool
    regimen: Regimen
    history: np.ndarray


TARGETS = ("trough", "auc", "cmax", "time_in_range")


def optimise_dose(
    fit: FitResult,
    *,
    target: str,
    window: tuple[float, float],
    cmt: str,
    n_doses: int = 10,
    interval: float = 12.0,
    dose0: float = 100.0,
    optimise_interval: bool = False,
    interval_bounds: tuple[float, float] = (4.0, 48.0),
    subject=None,
    n_samples: int = 1,
    key=None,
    steps: int = 200,
    lr: float = 0.05,
    grid: int = 49,
    infusion_duration: float | None = None,
    min_fraction: float = 0.8,
    occasion: str = "new",
) -> DoseResult:
    """Find by gradient the dose (and optionally interval) that puts a target in a window.

    The regimen is ``n_doses`` doses of ``dose`` every ``interval`` into ``cmt``
    (boluses, or infusions of ``infusion_duration``). The target is evaluated over the
    last dosing interval, ``[(n_doses - 1) * interval, n_doses * interval]``:
    ``"trough"`` (the concentration at its end), ``"auc"`` (its AUC), ``"cmax"`` (its
    maximum on the grid) or ``"time_in_range"`` (the fraction of it inside the
    window, smoothed for differentiation). For the first three the loss is
    ``(log value - log centre)^2`` with the window's geometric centre; for time in range
    it is minus the smoothed fraction. Gradients are forward-mode through the
    simulation with respect to log dose (and log interval), optimised by Adam.

    A fit with inter-occasion variability (``fit.iov``): with ``occasion="new"`` the
    regimen is a new occasion, as in :func:`forecast`. The first sample is the MAP
    estimate with ``kappa = 0``; with ``n_samples > 1`` every other sample also draws
    each IOV parameter's kappa from ``N(0, omega_iov^2)``, so the averaged loss (the
    expected squared log error, or the expected fraction of time in range) integrates
    over the new occasion's kappa and the dose accounts for the IOV. With
    ``occasion="last"`` the regimen continues the last observed occasion: the first
    sample is ``(eta_hat, kappa_hat)`` of that occasion, the others drawn jointly from
    their Laplace posterior.

    Arguments:
        fit: the subject's :class:`FitResult`.
        target: one of ``"trough"``, ``"auc"``, ``"cmax"``, ``"time_in_range"``.
        window: ``(low, high)`` of the target (concentration units, or
            concentration x time for AUC).
        cmt: the dosed compartment.
        n_doses, interval, dose0: regimen shape and starting values.
        optimise_interval: also optimise the interval within ``interval_bounds``.
        subject: the subject ID (default: the only one).
        n_samples: average the loss over this many Laplace posterior samples (1: the
            MAP parameters only).
        key: PRNG key for the samples.
        steps, lr: Adam steps and learning rate (in log units).
        grid: points per interval for AUC, Cmax and time in range.
        infusion_duration: give the doses as infusions of this duration.
        min_fraction: time-in-range success threshold.
        occasion: ``"new"`` or ``"last"`` (see :func:`forecast`).

    Returns:
        A :class:`DoseResult`.

    Raises:
        ValueError: unknown target, a bad window, ``n_samples`` or ``occasion``.
    """
    import optax

    check_occasion(occasion, "optimise_dose")
    _check_n_samples(n_samples)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
    lo, hi = float(window[0]), float(window[1])
    if not 0 < lo < hi:
        raise ValueError(f"window must be 0 < low < high, got {window}")
    i = fit.index(subject)
    key = jax.random.key(0) if key is None else key
    S = int(n_samples)
    params, _ = posterior_samples(fit, S, key, fit.ids[i], occasion=occasion)
    model = fit.model
    dose_kw: DoseKwargs = {} if infusion_duration is None else {"dur": float(infusion_duration)}
    base = Regimen(
        [Dose(amt=1.0, cmt=cmt, time=0.0, ii=float(interval), addl=n_doses - 1, **dose_kw)]
    )
    ev = compile_regimens([base] * S, model)
    is_dose = ev.kind != NOOP
    u = jnp.linspace(0.0, 1.0, grid)
    spec = Spec(model, fit.solver, fit.output, fit.names, fit.error)
    p = {k: jnp.asarray(v) for k, v in params.items()}
    centre = np.log(np.sqrt(lo * hi))
    width = 0.05 * (hi - lo)

    def metrics(x):
        dose = jnp.exp(x[0])
        ii = jnp.exp(x[1]) if optimise_interval else jnp.asarray(float(interval))
        scale = ii / float(interval)
        e = eqx.tree_at(
            lambda e: (e.time, e.amt),
            ev,
            (
                jnp.where(is_dose, ev.time * scale, ev.time),
                jnp.where(is_dose, ev.amt * dose, ev.amt),
            ),
        )
        ts = (n_doses - 1) * ii + u * ii
        ts2 = jnp.broadcast_to(ts, (S, grid))
        _, out, _ = simulate_core(model, spec.solver, p, e, ts2)
        c = out[fit.output]
        if target == "trough":
            v = c[:, -1]
        elif target == "auc":
            v = jnp.sum(0.5 * (c[:, 1:] + c[:, :-1]), axis=-1) * ii / (grid - 1)
        elif target == "cmax":
            v = jnp.max(c, axis=-1)
        else:
            inside = jax.nn.sigmoid((c - lo) / width) * jax.nn.sigmoid((hi - c) / width)
            v = jnp.mean(inside, axis=-1)
        return v

    def loss(x):
        v = metrics(x)
        if target == "time_in_range":
            return -jnp.mean(v)
        return jnp.mean((jnp.log(jnp.maximum(v, 1e-30)) - centre) ** 2)

    @jax.jit
    def value_and_grad(x):
        g = jax.jacfwd(loss)(x)
        return loss(x), g

    ib = np.log(np.asarray(interval_bounds, float))
    x = jnp.asarray([np.log(dose0), np.log(interval)])
    opt = optax.adam(lr)
    state = opt.init(x)
    hist = []
    mask = jnp.asarray([1.0, 1.0 if optimise_interval else 0.0])
    for _ in range(int(steps)):
        val, g = value_and_grad(x)
        hist.append(float(val))
        upd, state = opt.update(g * mask, state, x)
        x = optax.apply_updates(x, upd)
        x = x.at[1].set(jnp.clip(x[1], ib[0], ib[1]))
    dose = float(jnp.exp(x[0]))
    ii = float(jnp.exp(x[1])) if optimise_interval else float(interval)
    v = float(metrics(x)[0])
    ok = (v >= min_fraction) if target == "time_in_range" else (lo <= v <= hi)
    reg = Regimen([Dose(amt=dose, cmt=cmt, time=0.0, ii=ii, addl=n_doses - 1, **dose_kw)])
    return DoseResult(
        dose=dose, interval=ii, value=v, in_window=bool(ok), regimen=reg, history=np.asarray(hist)
    )
