"""Dose optimisation over a NUTS posterior: the dose with the highest probability of
target attainment over the posterior draws (:func:`optimise_dose_posterior`)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..dosing import Dose, Regimen
from ..dosing._regimen import NOOP, compile_regimens
from ..solve._simulate import simulate_core
from ._forecast import TARGETS
from ._forecast import DoseKwargs as _DoseKwargs
from ._posterior_result import PosteriorResult, check_int, draw_params, thin


@dataclasses.dataclass(eq=False)
class PosteriorDose:
    """The outcome of :func:`optimise_dose_posterior`.

    Attributes:
        dose: the dose with the highest probability of target attainment (PTA).
        interval: the dosing interval.
        pta: its PTA: the fraction of posterior draws whose target lies in the
            window (time in range: whose fraction of time in range reaches
            ``min_fraction``).
        doses: ``(G,)`` the candidate doses; pta_curve: ``(G,)`` their PTAs.
        median_value: the target's posterior median at ``dose``.
        regimen: the chosen :class:`~twinjax.Regimen`.
        n_samples: the draws used.
    """

    dose: float
    interval: float
    pta: float
    doses: np.ndarray
    pta_curve: np.ndarray
    median_value: float
    regimen: Regimen
    n_samples: int


def optimise_dose_posterior(
    post: PosteriorResult,
    *,
    target: str,
    window: tuple[float, float],
    cmt: str,
    dose_range: tuple[float, float],
    n_doses: int = 10,
    interval: float = 12.0,
    subject=None,
    n_candidates: int = 41,
    n_samples: int | None = 1000,
    key=None,
    grid: int = 49,
    infusion_duration: float | None = None,
    min_fraction: float = 0.8,
) -> PosteriorDose:
    """The dose that maximises the probability of target attainment over the draws.

    The regimen and targets are those of :func:`~twinjax.calibrate.optimise_dose`
    (``n_doses`` doses every ``interval`` into ``cmt``; the target over the last
    interval: ``"trough"``, ``"auc"``, ``"cmax"`` or ``"time_in_range"``). For each
    of ``n_candidates`` doses log-spaced over ``dose_range`` the target is computed
    for every posterior draw (all draws x doses in one batched simulation), and the
    PTA is the fraction of draws in the window. The dose with the highest PTA is
    chosen (ties: the one whose posterior median target is closest to the window's
    geometric centre).

    Raises:
        ValueError: unknown target, a bad window or dose range.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
    lo, hi = float(window[0]), float(window[1])
    if not 0 < lo < hi:
        raise ValueError(f"window must be 0 < low < high, got {window}")
    d_lo, d_hi = float(dose_range[0]), float(dose_range[1])
    if not 0 < d_lo < d_hi:
        raise ValueError(f"dose_range must be 0 < low < high, got {dose_range}")
    G = check_int("n_candidates", n_candidates, 2)
    n_doses = check_int("n_doses", n_doses, 1)
    if not interval > 0:
        raise ValueError(f"interval must be > 0, got {interval}")
    i = post.index(subject)
    if not np.all(np.isfinite(post.etas[i])):
        raise ValueError(f"subject {post.ids[i]!r} has no finite posterior draws")
    key = jax.random.key(0) if key is None else key
    etas = thin(post, i, n_samples, key)
    S = etas.shape[0]
    params = draw_params(post, i, etas)
    doses = np.geomspace(d_lo, d_hi, G)
    model = post.model
    dose_kw: _DoseKwargs = {} if infusion_duration is None else {"dur": float(infusion_duration)}
    base = Regimen(
        [Dose(amt=1.0, cmt=cmt, time=0.0, ii=float(interval), addl=n_doses - 1, **dose_kw)]
    )
    B = S * G
    ev = compile_regimens([base] * B, model)
    amt = jnp.repeat(jnp.asarray(doses), S)  # dose-major: row g*S + s
    ev = eqx.tree_at(lambda e: e.amt, ev, jnp.where(ev.kind != NOOP, ev.amt * amt[:, None], ev.amt))
    p = {kk: jnp.tile(jnp.asarray(v), (G,) + (1,) * (jnp.ndim(v) - 1)) for kk, v in params.items()}
    ts = (n_doses - 1) * float(interval) + np.linspace(0.0, float(interval), grid)
    ts2 = jnp.broadcast_to(jnp.asarray(ts), (B, grid))
    _, out, status = eqx.filter_jit(simulate_core)(model, post.solver, p, ev, ts2)
    c = np.asarray(out[post.output]).reshape(G, S, grid)
    if target == "trough":
        v = c[..., -1]
    elif target == "auc":
        v = np.trapezoid(c, ts, axis=-1)
    elif target == "cmax":
        v = c.max(axis=-1)
    else:
        v = np.mean((c >= lo) & (c <= hi), axis=-1)
    ok = np.asarray(status).reshape(G, S) == 0
    hit = (v >= min_fraction) if target == "time_in_range" else ((v >= lo) & (v <= hi))
    pta = np.mean(hit & ok, axis=1)
    med = np.median(np.where(ok, v, np.nan), axis=1)
    if target == "time_in_range":
        dist = -med
    else:
        dist = np.abs(np.log(np.maximum(med, 1e-300)) - 0.5 * np.log(lo * hi))
    best = np.lexsort((dist, -pta))[0]
    dose = float(doses[best])
    reg = Regimen(
        [Dose(amt=dose, cmt=cmt, time=0.0, ii=float(interval), addl=n_doses - 1, **dose_kw)]
    )
    return PosteriorDose(
        dose=dose,
        interval=float(interval),
        pta=float(pta[best]),
        doses=doses,
        pta_curve=pta,
        median_value=float(med[best]),
        regimen=reg,
        n_samples=int(S),
    )
