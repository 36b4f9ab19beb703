"""Goodness-of-fit panel, eta-covariate plots and a prediction-corrected VPC."""

from __future__ import annotations

import numpy as np

from ._vpc import (
    binned_percentiles,
    binned_percentiles_censored,
    draw_censoring_panel,
    record_limits,
)

__all__ = ["eta_covariates", "gof_panel", "pcvpc", "pcvpc_table"]


def _identity(ax, x, y, log: bool):
    v = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
    if log:
        v = v[v > 0]
    if v.size == 0:
        return
    lo, hi = float(v.min()), float(v.max())
    ax.plot([lo, hi], [lo, hi], color="k", lw=1, ls="--")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")


def _scatter_trend(ax, x, y, zero: bool = True):
    ok = np.isfinite(x) & np.isfinite(y)
    ax.scatter(x[ok], y[ok], s=8, color="tab:blue", alpha=0.6)
    if zero:
        ax.axhline(0, color="k", lw=1)
        for h in (-1.96, 1.96):
            ax.axhline(h, color="0.5", lw=0.8, ls=":")
    if ok.sum() >= 8:  # binned median trend (deciles of x)
        edges = np.unique(np.quantile(x[ok], np.linspace(0, 1, 9)))
        if edges.size >= 3:
            idx = np.clip(np.searchsorted(edges, x[ok], side="right") - 1, 0, edges.size - 2)
            cx = [np.median(x[ok][idx == b]) for b in range(edges.size - 1) if (idx == b).any()]
            cy = [np.median(y[ok][idx == b]) for b in range(edges.size - 1) if (idx == b).any()]
            ax.plot(cx, cy, color="tab:red", lw=1.5)


def _censored_points(ax, x, limit, below, above):
    """Censored records at their limit (``limit``: DV of a censored record) against
    ``x``: open red triangles pointing down (below an LLOQ) or up (above a ULOQ)."""
    for sel, mk, lab in ((below, "v", "below LLOQ, at LLOQ"), (above, "^", "above ULOQ")):
        if sel.any():
            ax.scatter(
                np.asarray(x)[sel],
                np.asarray(limit)[sel],
                s=16,
                marker=mk,
                facecolors="none",
                edgecolors="tab:red",
                alpha=0.8,
                label=f"{lab} ({int(sel.sum())})",
            )
            ax.legend(fontsize=7, loc="best")


def _qq(ax, v, label):
    from scipy import stats

    v = np.sort(v[np.isfinite(v)])
    if v.size == 0:
        ax.set_title(f"QQ {label}: no values")
        return
    q = stats.norm.ppf((np.arange(1, v.size + 1) - 0.5) / v.size)
    ax.scatter(q, v, s=8, color="tab:blue", alpha=0.6)
    lim = [min(q[0], v[0]), max(q[-1], v[-1])]
    ax.plot(lim, lim, color="k", lw=1, ls="--")
    ax.set_xlabel("N(0,1) quantile")
    ax.set_ylabel(f"{label} quantile")
    ax.set_title(f"QQ plot of {label}")


def gof_panel(fit, npde=None, *, log: bool = False, title: str | None = None):
    """The standard goodness-of-fit panel of a population fit, in one figure.

    DV vs PRED and DV vs IPRED (identity lines), CWRES vs TIME and vs PRED, NPDE vs
    TIME and vs PRED, QQ plots of CWRES and NPDE; the eta-shrinkage is in the title.
    Scatter plots carry a binned median trend (red).

    Censored records (BLQ): in DV vs PRED and DV vs IPRED they are drawn at their limit
    (DV is the LLOQ; the upper limit for right-censored records) against their PRED /
    IPRED, as open red downward triangles (upward for above an upper limit), so that a
    model predicting far above the LLOQ where the data are below it shows; they have no
    residual (CWRES and NPDE are NaN there, or imputed by ``npde(censored="cdf")``), so
    the residual panels leave them out, and the figure title counts them.

    Arguments:
        fit: a ``PopulationFitResult`` (CWRES from ``fit.cwres``) or a ``FitResult``
            (CWRES computed with :func:`twinjax.calibrate.cwres`).
        npde: an :class:`~twinjax.calibrate.NpdeResult` (default: none; the NPDE panels
            then say so).
        log: logarithmic axes for DV vs PRED/IPRED.
        title: the figure title.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    ind = getattr(fit, "individual", fit)
    cw = getattr(fit, "cwres", None)
    if cw is None:
        from ..calibrate import cwres

        cw = cwres(ind)
    cmask = np.asarray(ind.censored, bool) & ind.mask
    use = ind.mask & ~cmask
    fd_cens = ind.data.cens
    cflag = np.zeros(cmask.shape, np.int32) if fd_cens is None else np.asarray(fd_cens)
    c_lo, c_hi = cmask & (cflag == 1), cmask & (cflag == -1)
    dv, pred, ipred = ind.dv[use], ind.pred[use], ind.ipred[use]
    t, c = ind.times[use], np.asarray(cw)[use]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    ax = axes[0, 0]
    ax.scatter(pred, dv, s=8, color="tab:blue", alpha=0.6)
    _censored_points(ax, ind.pred, ind.dv, c_lo, c_hi)
    _identity(ax, pred, dv, log)
    ax.set_xlabel("PRED")
    ax.set_ylabel("DV")
    ax.set_title("DV vs PRED")
    ax = axes[0, 1]
    ax.scatter(ipred, dv, s=8, color="tab:blue", alpha=0.6)
    _censored_points(ax, ind.ipred, ind.dv, c_lo, c_hi)
    _identity(ax, ipred, dv, log)
    ax.set_xlabel("IPRED")
    ax.set_ylabel("DV")
    ax.set_title("DV vs IPRED")
    ax = axes[0, 2]
    _scatter_trend(ax, t, c)
    ax.set_xlabel("TIME")
    ax.set_ylabel("CWRES")
    ax.set_title("CWRES vs TIME")
    ax = axes[0, 3]
    _scatter_trend(ax, pred, c)
    ax.set_xlabel("PRED")
    ax.set_ylabel("CWRES")
    ax.set_title("CWRES vs PRED")
    if npde is not None:
        z = np.asarray(npde.npde)
        zu = npde.mask
        _scatter_trend(axes[1, 0], npde.times[zu], z[zu])
        pr = npde.pred if npde.pred is not None else np.full(z.shape, np.nan)
        _scatter_trend(axes[1, 1], pr[zu], z[zu])
        _qq(axes[1, 3], z[zu], "NPDE")
        axes[1, 0].set_title(f"NPDE vs TIME ({npde.n_sim} replicates)")
        axes[1, 1].set_title("NPDE vs PRED")
    else:
        for ax in (axes[1, 0], axes[1, 1], axes[1, 3]):
            ax.text(0.5, 0.5, "NPDE not computed", ha="center", va="center")
    axes[1, 0].set_xlabel("TIME")
    axes[1, 0].set_ylabel("NPDE")
    axes[1, 1].set_xlabel("PRED")
    axes[1, 1].set_ylabel("NPDE")
    _qq(axes[1, 2], c, "CWRES")
    shr = ", ".join(f"{k} {100 * v:.0f}%" for k, v in ind.shrinkage.items())
    head = (title + "\n" if title else "") + f"eta-shrinkage: {shr}"
    n_c = int(cmask.sum())
    if n_c:
        head += (
            f"; {n_c} censored records ({int(c_lo.sum())} below LLOQ, {int(c_hi.sum())} above "
            "ULOQ) drawn at their limit in DV vs PRED/IPRED (triangles), no residuals"
        )
    fig.suptitle(head, fontsize=11)
    fig.tight_layout()
    return fig


def eta_covariates(fit, covariates=None):
    """Empirical Bayes etas against the baseline covariates (one panel per pair).

    Arguments:
        fit: a ``PopulationFitResult`` or ``FitResult``.
        covariates: the covariate columns to show (default: every numeric column of
            the dataset's covariates but ID).

    Returns:
        The matplotlib Figure (a note in the figure when there are no covariates).
    """
    import matplotlib.pyplot as plt

    ind = getattr(fit, "individual", fit)
    cov = ind.data.covariates
    cols = list(covariates) if covariates is not None else []
    if covariates is None and cov is not None:
        cols = [
            c
            for c in cov.columns
            if str(c).upper() != "ID" and np.issubdtype(np.asarray(cov[c]).dtype, np.number)
        ]
    names = list(ind.names)
    if not cols or not names:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.text(0.5, 0.5, "no covariates in the dataset", ha="center", va="center")
        ax.set_axis_off()
        return fig
    fig, axes = plt.subplots(
        len(names), len(cols), figsize=(3.6 * len(cols), 2.8 * len(names)), squeeze=False
    )
    for a, k in enumerate(names):
        e = ind.etas[:, a]
        for b, c in enumerate(cols):
            ax = axes[a, b]
            x = np.asarray(cov[c], float)
            ok = np.isfinite(x) & np.isfinite(e)
            ax.scatter(x[ok], e[ok], s=14, color="tab:blue")
            ax.axhline(0, color="k", lw=1)
            if ok.sum() >= 3 and np.ptp(x[ok]) > 0:
                slope, icpt = np.polyfit(x[ok], e[ok], 1)
                xs = np.array([x[ok].min(), x[ok].max()])
                ax.plot(xs, icpt + slope * xs, color="tab:red", lw=1.2)
            ax.set_xlabel(c)
            ax.set_ylabel(f"ETA({k})")
    fig.suptitle("empirical Bayes etas vs covariates", fontsize=11)
    fig.tight_layout()
    return fig


def pcvpc_table(
    fit,
    n_sim: int = 200,
    key=None,
    *,
    bins: int | np.ndarray = 8,
    percentiles=(5.0, 50.0, 95.0),
    level: float = 0.9,
    lloq=None,
):
    """The numbers behind a prediction-corrected VPC (Bergstrand et al. 2011).

    Every observation and simulated value ``Y`` in time bin ``b`` is corrected to
    ``Y * PRED_b / PRED`` with ``PRED_b`` the median population prediction of the bin
    (the lower-bound-0 form of the paper's equation 1), so that the variability that
    comes from the design (doses, covariates) within a bin is removed. The bins and
    percentiles are then as in :func:`twinjax.plot.vpc_table`. Records whose PRED is
    not positive are left out (the correction is undefined there).

    Censored data (the fit has censored records, or ``lloq`` is given; the limits are
    found as in :func:`twinjax.plot.vpc_table`): each record's limits are corrected by
    the same factor as its value. The factor is positive, so a value is censored after
    the correction exactly when it was before: observed censored records and simulated
    values beyond their record's limit enter the percentiles as censored (a percentile
    that falls on them is NaN, not drawn), and the table has the fraction below the
    LLOQ (and above the upper limit, with right-censored records) per bin, the same
    numbers as the uncorrected VPC's. (The vpc R package instead refuses prediction
    correction of censored data and shows the uncensored records only.)

    Returns:
        A pandas DataFrame: bin, time, percentile, observed (prediction-corrected),
        sim_median, sim_lo, sim_hi, n_obs (plus the censoring columns of
        :func:`twinjax.plot.vpc_table` with censored data).
    """
    import jax

    from ..calibrate import simulate_replicates

    ind = getattr(fit, "individual", fit)
    limits = record_limits(ind, lloq)  # checked before anything is compiled
    key = jax.random.key(0) if key is None else key
    sim = simulate_replicates(ind, n_sim, key)
    mask = ind.mask & (np.asarray(ind.pred) > 0)
    t = ind.times[mask]
    obs = ind.dv[mask]
    pred = ind.pred[mask]
    simv = sim[:, mask]
    if limits is None:
        return binned_percentiles(t, obs, simv, bins, percentiles, level, pred=pred)
    lo, hi, below, above = (a[mask] for a in limits)
    return binned_percentiles_censored(
        t, obs, simv, lo, hi, below, above, bins, percentiles, level, pred=pred
    )


def pcvpc(
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
    """Plot a prediction-corrected VPC (see :func:`pcvpc_table`).

    With censored data the figure has the lower panel of :func:`twinjax.plot.vpc`: the
    observed and simulated fractions below the LLOQ (and above the upper limit) per
    bin; percentiles that fall on censored values are not drawn. ``ax`` may then be a
    pair ``(upper, lower)`` of Axes (with a single Axes the lower panel is not drawn).

    Returns:
        ``(figure, table)``.
    """
    import matplotlib.pyplot as plt

    table = pcvpc_table(fit, n_sim, key, bins=bins, percentiles=percentiles, level=level, lloq=lloq)
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
    for p in percentiles:
        g = table[table.percentile == p].sort_values("time")
        c = "tab:red" if p == percentiles[len(percentiles) // 2] else "tab:blue"
        ax.fill_between(g.time, g.sim_lo, g.sim_hi, color=c, alpha=0.2, lw=0)
        ax.plot(g.time, g.observed, color=c, lw=1.8, label=f"observed P{p:g}")
        ax.plot(g.time, g.sim_median, color=c, lw=1.0, ls="--")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("time")
    ax.set_ylabel("prediction-corrected observation")
    ax.set_title(title or f"pcVPC ({n_sim} simulated replicates, {int(level * 100)}% bands)")
    ax.legend(fontsize=8, loc="best")
    if axb is not None:
        draw_censoring_panel(axb, table)
        ax.set_xlabel("")
        fig.tight_layout()
    return fig, table
