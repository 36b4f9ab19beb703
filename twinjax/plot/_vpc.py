"""Visual predictive check (VPC) of a population fit."""

from __future__ import annotations

import numpy as np

__all__ = ["vpc", "vpc_table"]


def vpc_table(
    fit,
    n_sim: int = 200,
    key=None,
    *,
    bins: int | np.ndarray = 8,
    percentiles=(5.0, 50.0, 95.0),
    level: float = 0.9,
):
    """The numbers behind a VPC: observed and simulated percentiles per time bin.

    Arguments:
        fit: a ``PopulationFitResult`` (or a ``FitResult`` whose population and error
            are the model to check).
        n_sim: number of replicate datasets simulated from the fitted population.
        key: a JAX PRNG key (default ``jax.random.key(0)``).
        bins: number of time bins (by quantiles of the observation times) or bin edges.
        percentiles: the percentiles compared (default 5th, 50th, 95th).
        level: coverage of the simulation intervals around each simulated percentile.

    Returns:
        A pandas DataFrame with one row per bin and percentile: bin centre time,
        observed percentile, and the median and ``level`` interval of the simulated
        percentile.
    """
    import jax

    from ..calibrate import simulate_replicates

    ind = getattr(fit, "individual", fit)
    key = jax.random.key(0) if key is None else key
    sim = simulate_replicates(ind, n_sim, key)  # (R, N, T)
    mask = ind.mask
    t = ind.times[mask]
    obs = ind.dv[mask]
    simv = sim[:, mask]  # (R, n_obs)
    return binned_percentiles(t, obs, simv, bins, percentiles, level)


def binned_percentiles(t, obs, simv, bins, percentiles, level, pred=None):
    """The VPC table: per time bin and percentile, the observed percentile and the
    median and ``level`` interval of the simulated one (``simv``: ``(R, n_obs)``).

    ``pred``: the population predictions of the observations, for a prediction-corrected
    VPC: every value in a bin is scaled by ``median(pred in bin) / pred``.
    """
    import pandas as pd

    if np.ndim(bins) == 0:
        edges = np.unique(np.quantile(t, np.linspace(0, 1, int(bins) + 1)))
    else:
        edges = np.asarray(bins, float)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    a = (1 - level) / 2
    rows = []
    for b in range(len(edges) - 1):
        sel = idx == b
        if not sel.any():
            continue
        corr = 1.0 if pred is None else np.median(pred[sel]) / pred[sel]
        o = obs[sel] * corr
        s = simv[:, sel] * corr
        for p in percentiles:
            sp = np.percentile(s, p, axis=1)
            rows.append(
                dict(
                    bin=b,
                    time=float(np.median(t[sel])),
                    percentile=p,
                    observed=float(np.percentile(o, p)),
                    sim_median=float(np.median(sp)),
                    sim_lo=float(np.quantile(sp, a)),
                    sim_hi=float(np.quantile(sp, 1 - a)),
                    n_obs=int(sel.sum()),
                )
            )
    return pd.DataFrame(rows)


def vpc(
    fit,
    n_sim: int = 200,
    key=None,
    *,
    bins=8,
    percentiles=(5.0, 50.0, 95.0),
    level: float = 0.9,
    ax=None,
    log_y: bool = False,
    title: str | None = None,
):
    """Plot a VPC: observations, observed percentiles and simulated percentile bands.

    Arguments:
        fit: a ``PopulationFitResult`` (see :func:`vpc_table`).
        n_sim, key, bins, percentiles, level: see :func:`vpc_table`.
        ax: a matplotlib Axes (default: a new figure).
        log_y: logarithmic concentration axis.
        title: the plot title.

    Returns:
        ``(figure, table)``: the matplotlib Figure and the :func:`vpc_table` DataFrame.
    """
    import matplotlib.pyplot as plt

    table = vpc_table(fit, n_sim, key, bins=bins, percentiles=percentiles, level=level)
    ind = getattr(fit, "individual", fit)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    else:
        fig = ax.figure
    ax.scatter(ind.times[ind.mask], ind.dv[ind.mask], s=8, color="0.5", alpha=0.6, label="observed")
    colours = {percentiles[0]: "tab:blue", percentiles[-1]: "tab:blue"}
    for p in percentiles:
        g = table[table.percentile == p].sort_values("time")
        c = colours.get(p, "tab:red")
        ax.fill_between(g.time, g.sim_lo, g.sim_hi, color=c, alpha=0.2, lw=0)
        ax.plot(g.time, g.observed, color=c, lw=1.8, label=f"observed P{p:g}")
        ax.plot(g.time, g.sim_median, color=c, lw=1.0, ls="--")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("time")
    ax.set_ylabel("observation")
    ax.set_title(title or f"VPC ({n_sim} simulated replicates, {int(level * 100)}% bands)")
    ax.legend(fontsize=8, loc="best")
    return fig, table
