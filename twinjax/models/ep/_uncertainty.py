"""The uncertainty version of the CiPA qNet classification: a probability per risk class.

Method (Chang KC, Dutta S, et al. Front Physiol 8:917, 2017; Li Z, et al. Clin
Pharmacol Ther 105:466, 2019): every uncertainty sample of a compound's drug
parameters (the dynamic hERG binding parameters and the Hill IC50 / h of the other
currents) is run through the CiPA qNet protocol at 1-4 x free Cmax; the torsade metric
score (TMS, mean qNet over the doses) of each sample is classified with the Li 2019
thresholds, and the fraction of samples in each class is the probability of that class.

Samples, from published data only (``cipa_data/SOURCES.md``):

- **hERG binding** (Kmax, Ku, n, halfmax, Vhalf): rows of the FDA's own bootstrap fits
  (2000 per compound; FDA/CiPA @ e881df6 ``hERG_fitting/results/<drug>/boot_pars.csv``
  for the 12 training compounds, FDA/CiPA @ a0924b5
  ``hERG_fitting/hERG_fitting_results.zip`` for the 16 validation compounds), drawn
  without replacement by the seed (with replacement beyond 2000 samples).
- **Hill IC50 / h** of INa, INaL, ICaL, Ito, IKs, IK1: a nonparametric bootstrap of the
  published per-concentration block data (``cipa_data/hill_block.csv``), resampled
  within each concentration (the design kept), each resample refitted here by least
  squares with the FDA's model and bounds (``Hill_fitting/IC50_mcmc.R``: block % =
  100 (1 - 1 / (1 + (C / IC50)^h)), log IC50 in [log 1e-10, log 1e10] nM, h in
  [0, 10]), all fits of all samples in one batched Levenberg-Marquardt call
  (:func:`fit_hill`). The FDA characterised this part by Bayesian MCMC (FME
  ``modMCMC``), not by a bootstrap: the spread here is a bootstrap substitute, not the
  FDA's posterior. Currents without a fit in the table stay unblocked in every sample.

Not included: uncertainty of the thresholds (fixed at 0.0579 / 0.0689 C/F), of the
free Cmax, and of the model itself.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._cipa_protocol import CLASSES, DOSES, ORDER, check_inputs, classify, select_beat

_DATA = pathlib.Path(__file__).with_name("cipa_data")
HILL_CHANNELS = ("INa", "INaL", "ICaL", "Ito", "IKs", "IK1")
HERG = ("Kmax", "Ku", "n", "halfmax", "Vhalf")
# FDA/CiPA@e881df6 Hill_fitting/IC50_mcmc.R: lowBds / uppBds of (log IC50 [nM], h)
LOG_IC50_BOUNDS = (math.log(1e-10), math.log(1e10))
H_BOUNDS = (0.0, 10.0)
PERCENTILES = (2.5, 50.0, 97.5)


@functools.cache
def _block_data():
    import pandas as pd

    return pd.read_csv(_DATA / "hill_block.csv")


@functools.cache
def _herg_boot():
    import pandas as pd

    return pd.read_csv(_DATA / "herg_boot.csv.gz", comment="#")


def block_data():
    """The published per-concentration block data (percent) of the six non-hERG currents
    for the 28 CiPA compounds (``compound, channel, conc_nM, block_pct, source``)."""
    return _block_data().copy()


def herg_bootstrap():
    """The FDA's bootstrap fits of the dynamic hERG parameters (``compound, boot,
    Kmax, Ku, n, halfmax, Vhalf``; 2000 rows per compound)."""
    return _herg_boot().copy()


# ----------------------------------------------------------------------- Hill fits
def _starts(conc):
    """Start values of log IC50 (per fit): around the data's concentration range."""
    lc = np.log(conc)
    lo, hi = np.nanmin(lc), np.nanmax(lc)
    return np.array([lo - 2.0, lo, 0.5 * (lo + hi), hi, hi + 2.0, hi + 5.0])


def fit_hill(conc, block, weights=None, *, iterations: int = 200):
    """Least-squares Hill fits, batched: ``block % = 100 (1 - 1/(1 + (C/IC50)^h))``.

    Every fit minimises ``sum_i w_i (block_i - model(C_i))^2`` over log IC50 and h
    within the FDA's bounds (log IC50 in [log 1e-10, log 1e10] with IC50 in the unit
    of ``conc``, h in [0, 10]) by Levenberg-Marquardt (projected onto the bounds) from
    several starts (log IC50 at the data range's ends, middle, and beyond it; h = 1),
    keeping the best. Bootstrap resamples are given as multiplicity ``weights``.

    Arguments:
        conc: ``(B, L)`` concentrations (> 0; padding: any positive value with weight 0).
        block: ``(B, L)`` percent block.
        weights: ``(B, L)`` non-negative weights (default 1).
        iterations: LM iterations per start.

    Returns:
        ``(ic50, h, sse)``, each ``(B,)`` numpy float64.
    """
    from ...population._demographics import float64_draws

    conc = np.atleast_2d(np.asarray(conc, np.float64))
    block = np.atleast_2d(np.asarray(block, np.float64))
    w = np.ones_like(conc) if weights is None else np.atleast_2d(np.asarray(weights, np.float64))
    if conc.shape != block.shape or conc.shape != w.shape:
        raise ValueError(
            f"conc, block, weights must have one shape, got {conc.shape}, {block.shape}, {w.shape}"
        )
    if not (np.all(np.isfinite(conc)) and np.all(conc > 0)):
        raise ValueError("conc must be finite and > 0 (pad with a positive value, weight 0)")
    if not (np.all(np.isfinite(block)) and np.all(np.isfinite(w)) and np.all(w >= 0)):
        raise ValueError("block must be finite and weights finite and >= 0")
    starts = np.stack([_starts(np.where(wi > 0, ci, np.nan)) for ci, wi in zip(conc, w)])
    with float64_draws():  # float64 fits whatever jax_enable_x64 says
        out = _fit(
            jnp.asarray(np.log(conc)),
            jnp.asarray(block),
            jnp.asarray(w),
            jnp.asarray(starts),
            int(iterations),
        )
        lic, h, sse = (np.asarray(a, np.float64) for a in out)
    return np.exp(lic), h, sse


@functools.partial(jax.jit, static_argnums=4)
def _fit(logc, y, w, starts, iterations):
    lo = jnp.array([LOG_IC50_BOUNDS[0], H_BOUNDS[0]])
    hi = jnp.array([LOG_IC50_BOUNDS[1], H_BOUNDS[1]])

    def resid(theta, lc, yy):
        z = theta[1] * (lc - theta[0])  # h log(C / IC50)
        f = 100.0 * jax.nn.sigmoid(z)  # 100 (1 - 1 / (1 + (C/IC50)^h))
        df = 100.0 * jax.nn.sigmoid(z) * jax.nn.sigmoid(-z)
        J = jnp.stack([-theta[1] * df, (lc - theta[0]) * df], axis=-1)  # d f / d theta
        return yy - f, J

    def one(theta0, lc, yy, ww):
        def sse(th):
            r, _ = resid(th, lc, yy)
            return jnp.sum(ww * r * r)

        def step(_, c):
            th, lam, s = c
            r, J = resid(th, lc, yy)
            A = (J * ww[:, None]).T @ J
            g = (J * ww[:, None]).T @ r
            A = A + lam * (jnp.diag(jnp.diag(A)) + 1e-12 * jnp.eye(2))
            d = jnp.linalg.solve(A, g)
            new = jnp.clip(th + d, lo, hi)
            s_new = sse(new)
            ok = jnp.isfinite(s_new) & (s_new < s)
            th = jnp.where(ok, new, th)
            s = jnp.where(ok, s_new, s)
            lam = jnp.where(ok, lam / 3.0, lam * 2.0)
            return th, jnp.clip(lam, 1e-12, 1e12), s

        th0 = jnp.clip(theta0, lo, hi)
        th, _, s = jax.lax.fori_loop(0, iterations, step, (th0, jnp.asarray(1e-3), sse(th0)))
        return th, s

    def per_fit(lc, yy, ww, st):
        thetas = jnp.stack([st, jnp.ones_like(st)], axis=-1)
        th, s = jax.vmap(one, in_axes=(0, None, None, None))(thetas, lc, yy, ww)
        s = jnp.where(jnp.isfinite(s), s, jnp.inf)
        k = jnp.argmin(s)
        return th[k, 0], th[k, 1], s[k]

    return jax.vmap(per_fit)(logc, y, w, starts)


def bootstrap_counts(groups, n: int, rng) -> np.ndarray:
    """Multiplicities of a bootstrap resample within groups (e.g. concentrations).

    Arguments:
        groups: ``(L,)`` group label of each data point.
        n: number of resamples.
        rng: a ``numpy.random.Generator``.

    Returns:
        ``(n, L)`` integer counts: in each group of size m, m draws with replacement.
    """
    groups = np.asarray(groups)
    out = np.zeros((n, len(groups)), np.int64)
    for g in dict.fromkeys(groups.tolist()):
        idx = np.flatnonzero(groups == g)
        out[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n)
    return out


def hill_bootstrap(data, n: int, seed: int = 0, *, iterations: int = 200):
    """Bootstrap refits of Hill IC50 / h, every (compound, channel) and resample in one
    batched :func:`fit_hill` call.

    Arguments:
        data: rows ``compound, channel, conc_nM, block_pct`` (e.g. :func:`block_data`).
        n: resamples per (compound, channel); ``n = 0`` fits the data as given.
        seed: seed of the resampling (numpy ``default_rng``).

    Returns:
        ``{(compound, channel): (ic50 (n,), h (n,))}`` (``(1,)`` arrays when ``n = 0``).
    """
    rng = np.random.default_rng(seed)
    keys = list(dict.fromkeys(zip(data["compound"], data["channel"])))
    if not keys:
        return {}
    L = max(int(((data["compound"] == c) & (data["channel"] == ch)).sum()) for c, ch in keys)
    reps = max(n, 1)
    C = np.ones((len(keys) * reps, L))
    Y = np.zeros_like(C)
    W = np.zeros_like(C)
    for k, (c, ch) in enumerate(keys):
        d = data[(data["compound"] == c) & (data["channel"] == ch)]
        x, y = d["conc_nM"].to_numpy(float), d["block_pct"].to_numpy(float)
        m = len(x)
        cnt = bootstrap_counts(x, n, rng) if n > 0 else np.ones((1, m))
        rows = slice(k * reps, (k + 1) * reps)
        C[rows, :m], Y[rows, :m], W[rows, :m] = x, y, cnt
    ic50, h, _ = fit_hill(C, Y, W, iterations=iterations)
    return {
        key: (ic50[k * reps : (k + 1) * reps], h[k * reps : (k + 1) * reps])
        for k, key in enumerate(keys)
    }


# ------------------------------------------------------------------------- samples
def _columns():
    return ["compound", "sample", *HERG] + [
        f"{ch}_{q}" for ch in HILL_CHANNELS for q in ("IC50", "h")
    ]


def point_samples(compounds: Sequence[str], n: int = 1):
    """Zero-spread samples: ``n`` copies of each compound's table values."""
    import pandas as pd

    from ._cipa import compounds as table

    names = check_inputs(compounds, DOSES, 1, 1, None)
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    tab = table()
    rows = []
    for c in names:
        r = tab.loc[c]
        for s in range(n):
            row = dict(compound=c, sample=s, **{k: float(r[k]) for k in HERG})
            for ch in HILL_CHANNELS:
                row[f"{ch}_IC50"], row[f"{ch}_h"] = float(r[f"{ch}_IC50"]), float(r[f"{ch}_h"])
            rows.append(row)
    return pd.DataFrame(rows, columns=_columns())


def draw_samples(compounds: Sequence[str], n: int, seed: int = 0):
    """Uncertainty samples of the drug parameters (see the module docstring).

    Arguments:
        compounds: CiPA compound names.
        n: samples per compound (>= 1; the FDA: 2000).
        seed: seed (numpy ``default_rng``): the same seed gives the same samples.

    Returns:
        A DataFrame, one row per compound and sample: ``compound, sample``, the hERG
        parameters and ``<channel>_IC50`` (nM; NaN = no block), ``<channel>_h``, plus
        ``herg_boot`` (the row of the FDA bootstrap file used).
    """
    from ._cipa import compounds as table

    names = check_inputs(compounds, DOSES, 1, 1, None)
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise ValueError(f"n (samples) must be an integer >= 1, got {n!r}")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    tab = table()
    rng = np.random.default_rng(seed)
    boot = _herg_boot()
    data = _block_data()
    data = data[data["compound"].isin(names)]
    fits = hill_bootstrap(data, n, int(rng.integers(2**31)))
    out = point_samples(names, n)
    picks = []
    for c in names:
        b = boot[boot["compound"] == c]
        idx = rng.choice(len(b), n, replace=n > len(b))
        sel = out["compound"] == c
        for k in HERG:
            out.loc[sel, k] = b[k].to_numpy(float)[idx]
        picks.append(b["boot"].to_numpy()[idx])
        for ch in HILL_CHANNELS:
            if not np.isfinite(float(tab.loc[c, f"{ch}_IC50"])):
                continue
            if (c, ch) not in fits:
                raise ValueError(f"{c}: {ch} has a Hill fit in the table but no block data")
            ic50, h = fits[(c, ch)]
            out.loc[sel, f"{ch}_IC50"], out.loc[sel, f"{ch}_h"] = ic50, h
    out["herg_boot"] = np.concatenate(picks)
    return out


# ----------------------------------------------------------------------- protocol
@dataclasses.dataclass
class UncertaintyResult:
    """Output of :func:`qnet_uncertainty`.

    Attributes:
        probabilities: one row per compound: ``compound, set, cipa_category,
            n_samples, P_high, P_intermediate, P_low, P_na`` (samples with no finite
            TMS), ``TMS_p2.5, TMS_p50, TMS_p97.5``, ``most_likely``.
        samples: one row per compound and sample: the drug parameters, ``TMS``,
            ``predicted``, ``doses_used``.
        doses: one row per cell: ``compound, sample, multiple, conc_nM, qNet, kept_beat,
            max_dv, APD90, dropped, status``.
        control: qNet and APD90 of the drug-free cell.
        beats, window, seconds: what was run and how long it took.
    """

    probabilities: Any
    samples: Any
    doses: Any
    control: dict
    beats: int
    window: int
    seconds: float


def _cell_params(model, rows, mult):
    """Parameters of one cell per (sample row, multiple), ``(N,)`` arrays."""
    from . import _herg as herg
    from ._cipa import HILL_TARGETS
    from ._cipa import compounds as table

    tab = table()
    rep = np.repeat(np.arange(len(rows)), len(mult))
    conc = np.asarray([float(tab.loc[c, "cmax_free_nM"]) for c in rows["compound"]], float)[
        rep
    ] * np.tile(mult, len(rows))
    p = {"D": jnp.asarray(conc)}
    for k in HERG:
        p[k] = jnp.asarray(rows[k].to_numpy(float)[rep])
    p["Kt"] = jnp.full(conc.shape, herg.KT)
    for ch, name in HILL_TARGETS.items():
        ic50 = rows[f"{ch}_IC50"].to_numpy(float)[rep]
        h = np.nan_to_num(rows[f"{ch}_h"].to_numpy(float)[rep])
        active = np.isfinite(ic50) & (ic50 > 0)
        frac = np.where(active, 1.0 / (1.0 + (conc / np.where(active, ic50, 1.0)) ** h), 1.0)
        p[name] = jnp.asarray(model.param(name).value * frac)
    return p, conc, rep


def check_samples(samples) -> None:
    """Refuse a samples table that lacks a column or has an invalid value, naming them."""
    import pandas as pd

    from ._cipa import compounds as table

    if not isinstance(samples, pd.DataFrame):
        raise ValueError(f"samples must be a pandas DataFrame, got {type(samples).__name__}")
    missing = [c for c in _columns() if c not in samples.columns]
    if missing:
        raise ValueError(f"samples: missing columns {missing}")
    if samples.empty:
        raise ValueError("samples: no rows")
    known = set(table().index)
    for i, r in samples.reset_index(drop=True).iterrows():
        if r["compound"] not in known:
            raise ValueError(f"samples row {i}: unknown compound {r['compound']!r}")
        for k in HERG:
            v = float(r[k])
            ok = np.isfinite(v) and (v >= 0 or k == "Vhalf")
            if not ok:
                raise ValueError(
                    f"samples row {i} ({r['compound']}): {k} = {v} must be finite"
                    + ("" if k == "Vhalf" else " and >= 0")
                )
        for ch in HILL_CHANNELS:
            ic50, h = float(r[f"{ch}_IC50"]), float(r[f"{ch}_h"])
            if np.isfinite(ic50) and not (ic50 > 0 and np.isfinite(h) and h >= 0):
                raise ValueError(
                    f"samples row {i} ({r['compound']}): {ch}_IC50 = {ic50}, {ch}_h = {h}: "
                    "IC50 must be > 0 (NaN: no block) and h finite and >= 0"
                )


def qnet_uncertainty(
    compounds: Sequence[str] | None = None,
    *,
    n: int = 100,
    seed: int = 0,
    samples=None,
    multiples: Sequence[float] = DOSES,
    beats: int = 1000,
    window: int = 250,
    chunk: int | None = None,
    solver=None,
    progress: Callable[[int, float], None] | None = None,
) -> UncertaintyResult:
    """The CiPA qNet protocol over uncertainty samples: a probability per risk class.

    Every sample x multiple is one CiPAORdv1.0 cell, and all of them (plus one
    drug-free control) are paced together in one batch by
    :func:`~twinjax.models.ep.pace_cipa` (chunks of ``chunk`` beats), then each cell's
    beat is selected as in :func:`~twinjax.models.ep._cipa_protocol.qnet_protocol`.

    Arguments:
        compounds: CiPA compound names (with ``samples`` given: default its compounds).
        n, seed: samples per compound and seed for :func:`draw_samples` (unused when
            ``samples`` is given).
        samples: a samples table (:func:`draw_samples`, :func:`point_samples`, or the
            user's own with the same columns).
        multiples: x free Cmax (TMS = mean over those of 1-4 present).
        beats, window, chunk, solver: as :func:`qnet_protocol`.
        progress: called after each chunk with ``(beats_done, seconds)``.

    Returns:
        An :class:`UncertaintyResult`.
    """
    import pandas as pd

    from ._cipa import CiPAORd, pace_cipa
    from ._cipa import compounds as table

    if samples is None:
        if compounds is None:
            raise ValueError("give compounds (and n, seed) or a samples table")
        check_inputs(compounds, multiples, beats, window, chunk)
        samples = draw_samples(compounds, n, seed)
    else:
        check_samples(samples)
        names = list(dict.fromkeys(samples["compound"]))
        if compounds is not None and [str(c).lower() for c in compounds] != names:
            raise ValueError(f"compounds {list(compounds)} differ from the samples' {names}")
        check_inputs(names, multiples, beats, window, chunk)
    samples = samples.reset_index(drop=True)
    mult = np.asarray([float(x) for x in multiples])
    chunk = chunk or min(beats, 50)
    model = CiPAORd()
    p, conc, rep = _cell_params(model, samples, mult)
    control = model.complete({}, dtype=jnp.float64)[0]
    params = {
        k: jnp.concatenate(
            [
                jnp.reshape(jnp.asarray(control[k], jnp.float64), (1,)),
                jnp.broadcast_to(p.get(k, control[k]), conc.shape),
            ]
        )
        for k in model.param_names
    }
    t0 = time.perf_counter()
    y, done, kept, status = None, 0, [], None
    while done < beats:
        nb = min(chunk, beats - done)
        r = pace_cipa(model, params, nb, y0=y, solver=solver)
        y = r.state
        done += nb
        st = np.asarray(r.status)
        status = st if status is None else np.maximum(status, st)
        kept.append({k: np.asarray(v) for k, v in r.biomarkers.items()})
        kept = [{k: np.concatenate([c[k] for c in kept])[-window:] for k in kept[0]}]
        if progress is not None:
            progress(done, time.perf_counter() - t0)
    assert status is not None
    sel = select_beat(kept[0], window)
    seconds = time.perf_counter() - t0
    tab = table()
    cells = pd.DataFrame(
        dict(
            compound=samples["compound"].to_numpy()[rep],
            sample=samples["sample"].to_numpy()[rep],
            row=rep,
            multiple=np.tile(mult, len(samples)),
            conc_nM=conc,
            qNet=sel["qNet"][1:],
            kept_beat=done - window + sel["kept_beat"][1:] + 1,
            max_dv=sel["max_dv"][1:],
            APD90=sel["APD90"][1:],
            ead_beats=sel["ead_beats"][1:],
            dropped=sel["dropped"][1:] | (status[1:] != 0),
            status=status[1:],
        )
    )
    tms_doses = [x for x in mult if x in DOSES] or list(mult)
    use = cells[cells["multiple"].isin(tms_doses) & ~cells["dropped"]]
    g = use.groupby("row")["qNet"]
    tms = g.mean().reindex(range(len(samples)))
    per = samples.copy()
    per["TMS"] = tms.to_numpy()
    per["doses_used"] = g.size().reindex(range(len(samples))).fillna(0).astype(int).to_numpy()
    per["predicted"] = [classify(t) for t in per["TMS"]]
    rows = []
    for c, s in per.groupby("compound", sort=False):
        k = len(s)
        fin = s["TMS"].to_numpy(float)
        fin = fin[np.isfinite(fin)]
        pr = {cls: float((s["predicted"] == cls).sum()) / k for cls in ORDER}
        row = dict(
            compound=c,
            set=str(tab.loc[c, "set"]),
            cipa_category=CLASSES[int(tab.loc[c, "cipa_class"])],
            n_samples=k,
            P_high=pr["high"],
            P_intermediate=pr["intermediate"],
            P_low=pr["low"],
            P_na=float((s["predicted"] == "n/a").sum()) / k,
        )
        for q in PERCENTILES:
            row[f"TMS_p{q:g}"] = float(np.percentile(fin, q)) if fin.size else float("nan")
        row["most_likely"] = max(ORDER, key=lambda cls: pr[cls]) if fin.size else "n/a"
        rows.append(row)
    return UncertaintyResult(
        probabilities=pd.DataFrame(rows),
        samples=per,
        doses=cells.drop(columns="row"),
        control=dict(
            qNet=float(sel["qNet"][0]), APD90=float(sel["APD90"][0]), status=int(status[0])
        ),
        beats=done,
        window=window,
        seconds=seconds,
    )


def plot_probabilities(probabilities, path, title: str = ""):
    """Stacked bars of P(high), P(intermediate), P(low) per compound, CiPA category
    marked, and the TMS median with its 2.5-97.5 % range (and ``TMS_point``, the point
    protocol's TMS, when the table has that column)."""
    import matplotlib.pyplot as plt

    from ._cipa_protocol import THRESHOLDS

    colour = {"high": "C3", "intermediate": "C0", "low": "C2"}
    s = probabilities.reset_index(drop=True)
    y = np.arange(len(s))
    fig, axes = plt.subplots(1, 2, figsize=(11, max(3.0, 0.25 * len(s) + 1.5)))
    left = np.zeros(len(s))
    for cls in ORDER:
        v = s[f"P_{cls}"].to_numpy(float)
        axes[0].barh(y, v, left=left, color=colour[cls], label=f"P({cls})")
        left += v
    axes[0].set_yticks(
        y, [f"{c} [{k}]" for c, k in zip(s["compound"], s["cipa_category"])], fontsize=7
    )
    axes[0].invert_yaxis()
    axes[0].set_xlim(0, 1)
    axes[0].set_xlabel("probability (fraction of samples); [CiPA category]")
    axes[0].legend(fontsize=7, loc="lower right")
    med, lo, hi = (s[f"TMS_p{q:g}"].to_numpy(float) for q in (50.0, 2.5, 97.5))
    axes[1].errorbar(med, y, xerr=[med - lo, hi - med], fmt="o", color="k", ms=3, lw=1)
    if "TMS_point" in s:  # the point protocol (table values), when given
        axes[1].plot(s["TMS_point"], y, "x", color="C1", label="point (table values)")
        axes[1].legend(fontsize=7)
    for thr in THRESHOLDS:
        axes[1].axvline(thr, ls="--", c="0.5")
    axes[1].set_yticks(y, list(s["compound"]), fontsize=7)
    axes[1].invert_yaxis()
    axes[1].set_xlabel("torsade metric score (C/F): median, 2.5-97.5 %")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
