"""Visual predictive check (VPC) of a population fit, with censored (BLQ) data.

References:
    - Bergstrand M, Hooker AC, Wallin JE, Karlsson MO. Prediction-corrected visual
      predictive checks for diagnosing nonlinear mixed-effects models. AAPS J
      13:143-151, 2011 (binning, percentiles and their simulated intervals).
    - Bergstrand M, Karlsson MO. Handling data below the limit of quantification in
      mixed effect models. AAPS J 11:371-380, 2009 (the VPC of censored data: the
      continuous panel drawn only above the LLOQ, and a panel of the fraction of
      records below it, observed vs simulated).
    - The vpc R package (R. Keizer, github.com/ronkeizer/vpc): ``quantile_cens`` (values
      below the limit set to ``-Inf``, a percentile that falls on them reported as
      ``NA``) for the observed percentiles, and ``vpc_cens`` (per replicate and bin the
      fraction of records below the LLOQ; its 5th, 50th and 95th percentiles over the
      replicates against the observed fraction). The package computes the simulated
      percentiles of the continuous panel without censoring (a ``TODO`` in its
      ``calc_vpc_continuous``); here the simulated values are censored in the same way
      as the observations, so that both sides of the comparison are alike.
"""

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
    lloq=None,
):
    """The numbers behind a VPC: observed and simulated percentiles per time bin.

    Arguments:
        fit: a ``PopulationFitResult`` (or a ``FitResult`` whose population and error
            are the model to check).
        n_sim: number of replicate datasets simulated from the fitted population.
        key: a JAX PRNG key (default ``jax.random.key(0)``).
        bins: number of time bins (by quantiles of the observation times) or bin edges.
        percentiles: the percentiles compared (default 5th, 50th, 95th).
        level: coverage of the simulation intervals around each simulated percentile
            (and around the simulated fraction below the LLOQ).
        lloq: the lower limit of quantification of every record: ``None`` (default:
            from the fit's censored records, see below), a number, or an ``(N, T)``
            array like the fit's ``times`` (NaN: no limit), e.g. a dataset's
            ``padded().lloq`` when the limits differ between records. With an explicit
            ``lloq``, an observed record below its limit counts as below it too (as
            ``fit_individual(..., lloq=)`` censors them).

    Censored data (the fit has censored records, or ``lloq`` is given): a left-censored
    record's limit is its DV; a record that is not censored takes the smallest limit of
    its subject's left-censored records, or, for a subject without any, the smallest
    limit in the data (with a single LLOQ, as from ``lloq=`` in the fit, every record
    has it; pass ``lloq`` when the limits differ and this rule is not the study's).
    Observed censored records and simulated values below their record's LLOQ (above its
    upper limit, for right-censored records' limits, inferred the same way) enter the
    percentiles as ``-inf`` (``+inf``), and a percentile that falls on them is NaN: it
    is below the LLOQ and not drawn (``quantile_cens`` of the vpc R package). The
    median and interval over the replicates of a simulated percentile are NaN in the
    same way when they fall on replicates whose percentile is censored. The table then
    has, per bin, the fraction of records below the LLOQ: ``blq_observed`` (flagged
    records / records in the bin; ``n_blq`` of them) and ``blq_sim_median``,
    ``blq_sim_lo``, ``blq_sim_hi``: the median and ``level`` interval over the
    replicates of each replicate's fraction of simulated values below their record's
    LLOQ (vpc R package ``vpc_cens``; Bergstrand & Karlsson 2009).

    Returns:
        A pandas DataFrame with one row per bin and percentile: bin centre time,
        observed percentile, and the median and ``level`` interval of the simulated
        percentile (plus the BLQ fraction columns above with censored data; without
        censoring the table is exactly the uncensored VPC's).
    """
    import jax

    from ..calibrate import simulate_replicates

    ind = getattr(fit, "individual", fit)
    limits = record_limits(ind, lloq)  # checked before anything is compiled
    key = jax.random.key(0) if key is None else key
    sim = simulate_replicates(ind, n_sim, key)  # (R, N, T)
    mask = ind.mask
    t = ind.times[mask]
    obs = ind.dv[mask]
    simv = sim[:, mask]  # (R, n_obs)
    if limits is None:
        return binned_percentiles(t, obs, simv, bins, percentiles, level)
    lo, hi, below, above = (a[mask] for a in limits)
    return binned_percentiles_censored(t, obs, simv, lo, hi, below, above, bins, percentiles, level)


def record_limits(ind, lloq=None):
    """Each record's lower and upper limits of quantification and its censoring.

    Arguments:
        ind: a ``FitResult``.
        lloq: see :func:`vpc_table`.

    Returns:
        ``None`` for data without censored records and no ``lloq``; else
        ``(lo, hi, below, above)``, all ``(N, T)``: the LLOQ and upper limit of every
        record (NaN: none) and which observed records are below / above them.
    """
    fd = ind.data
    shape = ind.times.shape
    cens = np.zeros(shape, np.int32) if fd.cens is None else np.asarray(fd.cens)
    used = np.asarray(ind.mask, bool)
    cens = np.where(used, cens, 0)
    dv = np.asarray(ind.dv, float)
    if lloq is None and not np.any(cens != 0):
        return None
    below = cens == 1
    above = cens == -1
    if lloq is None:
        lo = _fill_limits(np.where(below, dv, np.nan), used)
    else:
        try:
            arr = None if isinstance(lloq, bool) else np.asarray(lloq, dtype=float)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.ndim not in (0, 2) or (arr.ndim == 2 and arr.shape != shape):
            raise ValueError(
                f"lloq must be a number or an array of shape {shape} (one limit per record "
                f"like the fit's times, NaN for none), got {lloq!r:.80}"
            )
        if arr.ndim == 0 and not np.isfinite(arr):
            raise ValueError(f"lloq must be a finite number, got {lloq!r}")
        lo = np.broadcast_to(arr, shape).astype(float)
        lo = np.where(below, dv, lo)  # a flagged record's limit is its DV
        below = below | (used & (cens == 0) & (dv < lo))
    hi = _fill_limits(np.where(above, dv, np.nan), used, upper=True)
    return lo, hi, below & used, above & used


def _fill_limits(lim, used, upper: bool = False):
    """Limits of the records that are not censored: the subject's smallest (upper:
    largest) limit, else the data's; NaN where the data have none."""
    out = lim.copy()
    if not np.isfinite(lim).any():
        return out
    pick = np.nanmax if upper else np.nanmin
    overall = pick(lim)
    for i in range(lim.shape[0]):
        row = lim[i]
        v = pick(row) if np.isfinite(row).any() else overall
        out[i] = np.where(np.isfinite(row), row, np.where(used[i], v, np.nan))
    return out


def _bin_index(t, bins):
    if np.ndim(bins) == 0:
        edges = np.unique(np.quantile(t, np.linspace(0, 1, int(bins) + 1)))
    else:
        edges = np.asarray(bins, float)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    return edges, idx


def binned_percentiles(t, obs, simv, bins, percentiles, level, pred=None):
    """The VPC table: per time bin and percentile, the observed percentile and the
    median and ``level`` interval of the simulated one (``simv``: ``(R, n_obs)``).

    ``pred``: the population predictions of the observations, for a prediction-corrected
    VPC: every value in a bin is scaled by ``median(pred in bin) / pred``.
    """
    import pandas as pd

    edges, idx = _bin_index(t, bins)
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


def censored_percentile(x, p):
    """The ``p``-th percentile along the last axis of ``x`` whose censored values are
    ``-inf`` (below a lower limit) or ``+inf`` (above an upper one), by numpy's default
    (linear) interpolation; ``(value, left, right)``: the value is NaN where it falls
    on a censored value (``left``: below a lower limit; ``right``: above an upper one)
    or where ``x`` has NaN (a failed simulation)."""
    x = np.asarray(x, float)
    xs = np.sort(x, axis=-1)
    n = xs.shape[-1]
    v = float(p) / 100.0 * (n - 1)
    i0 = int(np.floor(v))
    i1 = min(i0 + 1, n - 1)
    g = v - i0
    a, b = xs[..., i0], xs[..., i1]
    left = a == -np.inf
    right = (a == np.inf) | ((b == np.inf) & (g > 0))
    nan = np.isnan(x).any(axis=-1)
    ok = ~(left | right | nan)
    af, bf = np.where(ok, a, 0.0), np.where(ok, b, 0.0)
    q = af if g == 0 else af + g * (bf - af)
    return np.where(ok, q, np.nan), left & ~nan, right & ~nan


def binned_percentiles_censored(
    t, obs, simv, lo, hi, below, above, bins, percentiles, level, pred=None
):
    """The VPC table of censored data (see :func:`vpc_table`): ``lo``/``hi`` each
    record's limits (NaN: none), ``below``/``above`` the observed censored records.

    ``pred``: the population predictions (all > 0) for a prediction-corrected VPC. A
    value ``Y`` and its record's limits are all scaled by the same positive factor
    ``median(pred in bin) / pred``, so which values are censored does not change: the
    censoring is decided on the uncorrected values and the limits, the percentiles of
    the uncensored values are taken after the correction, and the fractions below
    (above) the limits are those of the uncorrected VPC.

    With upper limits (right-censored records) the table also has the fraction above
    them per bin: ``alq_observed``, ``alq_sim_median``, ``alq_sim_lo``, ``alq_sim_hi``,
    ``n_alq``, computed like the fraction below the LLOQ."""
    import pandas as pd

    edges, idx = _bin_index(t, bins)
    a = (1 - level) / 2
    oc = np.where(below, -np.inf, np.where(above, np.inf, obs))
    with np.errstate(invalid="ignore"):  # NaN limits: no censoring there
        s_below = simv < lo
        s_above = simv > hi
    sc = np.where(s_below, -np.inf, np.where(s_above, np.inf, simv))
    ok = np.isfinite(simv)
    upper = bool(np.isfinite(hi).any())

    def fractions(tag, flagged, s_flag, sel):
        n_ok = ok[:, sel].sum(axis=1)
        frac = s_flag[:, sel].sum(axis=1) / np.where(n_ok > 0, n_ok, 1)
        frac = frac[n_ok > 0]
        return {
            f"{tag}_observed": float(flagged[sel].mean()),
            f"{tag}_sim_median": float(np.median(frac)) if frac.size else np.nan,
            f"{tag}_sim_lo": float(np.quantile(frac, a)) if frac.size else np.nan,
            f"{tag}_sim_hi": float(np.quantile(frac, 1 - a)) if frac.size else np.nan,
            f"n_{tag}": int(flagged[sel].sum()),
        }

    rows = []
    for b in range(len(edges) - 1):
        sel = idx == b
        if not sel.any():
            continue
        blq = fractions("blq", below, s_below, sel)
        if upper:
            blq.update(fractions("alq", above, s_above, sel))
        corr = 1.0 if pred is None else np.median(pred[sel]) / pred[sel]  # > 0
        sc_b, oc_b = sc[:, sel] * corr, oc[sel] * corr  # +-inf stay +-inf
        for p in percentiles:
            sp, left, right = censored_percentile(sc_b, p)  # (R,)
            spc = np.where(left, -np.inf, np.where(right, np.inf, sp))
            rows.append(
                dict(
                    bin=b,
                    time=float(np.median(t[sel])),
                    percentile=p,
                    observed=float(censored_percentile(oc_b, p)[0]),
                    sim_median=float(censored_percentile(spc, 50.0)[0]),
                    sim_lo=float(censored_percentile(spc, 100 * a)[0]),
                    sim_hi=float(censored_percentile(spc, 100 * (1 - a))[0]),
                    n_obs=int(sel.sum()),
                    **blq,
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
    lloq=None,
):
    """Plot a VPC: observations, observed percentiles and simulated percentile bands.

    With censored data (see :func:`vpc_table`) the figure has a second, lower panel:
    the observed fraction of records below the LLOQ per time bin (solid) against the
    median (dashed) and ``level`` interval (band) of the simulated fraction, as the
    vpc R package's ``vpc_cens`` and PsN/Xpose draw it (Bergstrand & Karlsson 2009).
    In the upper panel the censored observations are drawn at their LLOQ (open
    triangles), the LLOQ as a dotted line when it is one value, and percentiles below
    the LLOQ are not drawn.

    Arguments:
        fit: a ``PopulationFitResult`` (see :func:`vpc_table`).
        n_sim, key, bins, percentiles, level, lloq: see :func:`vpc_table`.
        ax: a matplotlib Axes (default: a new figure), or with censored data a pair
            ``(upper, lower)`` of Axes for the two panels (with a single Axes the BLQ
            panel is not drawn; the table still has its columns).
        log_y: logarithmic concentration axis.
        title: the plot title.

    Returns:
        ``(figure, table)``: the matplotlib Figure and the :func:`vpc_table` DataFrame.
    """
    import matplotlib.pyplot as plt

    table = vpc_table(fit, n_sim, key, bins=bins, percentiles=percentiles, level=level, lloq=lloq)
    ind = getattr(fit, "individual", fit)
    cens = "blq_observed" in table.columns
    axb = None
    if ax is None:
        if cens:
            fig, (ax, axb) = plt.subplots(
                2, 1, figsize=(7, 6.5), sharex=True, gridspec_kw=dict(height_ratios=(3, 1.4))
            )
        else:
            fig, ax = plt.subplots(figsize=(7, 4.5))
    else:
        if isinstance(ax, (list, tuple, np.ndarray)):
            ax, axb = ax[0], (ax[1] if len(ax) > 1 and cens else None)
        fig = ax.figure
    m = np.asarray(ind.mask, bool)
    if cens:
        lo, _, below, above = record_limits(ind, lloq)
        shown = m & ~below & ~above
    else:
        shown = m
    ax.scatter(ind.times[shown], ind.dv[shown], s=8, color="0.5", alpha=0.6, label="observed")
    if cens:
        if below.any():
            ax.scatter(
                ind.times[below],
                lo[below],
                s=14,
                marker="v",
                facecolors="none",
                edgecolors="tab:red",
                alpha=0.7,
                label=f"below LLOQ ({int(below.sum())}), at the LLOQ",
            )
        if above.any():
            ax.scatter(
                ind.times[above],
                ind.dv[above],
                s=14,
                marker="^",
                facecolors="none",
                edgecolors="tab:purple",
                alpha=0.7,
                label=f"above the upper limit ({int(above.sum())})",
            )
        lims = np.unique(lo[m & np.isfinite(lo)])
        if lims.size == 1:
            ax.axhline(lims[0], color="0.3", lw=1, ls=":", label=f"LLOQ {lims[0]:g}")
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
    if axb is not None:
        draw_censoring_panel(axb, table)
        ax.set_xlabel("")
        fig.tight_layout()
    return fig, table


def draw_censoring_panel(axb, table) -> None:
    """The lower panel of a VPC of censored data: per time bin the observed fraction of
    records below the LLOQ (solid) against the median (dashed) and interval (band) of
    the simulated fraction, and the same for the fraction above the upper limit when
    the table has it (``alq_*`` columns)."""
    g = table.groupby("bin").first().sort_values("time")
    axb.fill_between(g.time, g.blq_sim_lo, g.blq_sim_hi, color="tab:red", alpha=0.2, lw=0)
    axb.plot(g.time, g.blq_sim_median, color="tab:red", lw=1.0, ls="--", label="simulated")
    axb.plot(g.time, g.blq_observed, color="k", lw=1.8, marker="o", ms=3, label="observed")
    ylabel = "fraction < LLOQ"
    if "alq_observed" in g.columns:
        axb.fill_between(g.time, g.alq_sim_lo, g.alq_sim_hi, color="tab:purple", alpha=0.2, lw=0)
        axb.plot(
            g.time, g.alq_sim_median, color="tab:purple", lw=1.0, ls="--", label="simulated > ULOQ"
        )
        axb.plot(
            g.time,
            g.alq_observed,
            color="tab:purple",
            lw=1.8,
            marker="^",
            ms=3,
            label="observed > ULOQ",
        )
        ylabel = "fraction < LLOQ / > ULOQ"
    axb.set_ylim(-0.02, 1.02)
    axb.set_xlabel("time")
    axb.set_ylabel(ylabel)
    axb.legend(fontsize=8, loc="best")
