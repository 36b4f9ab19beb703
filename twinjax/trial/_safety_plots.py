"""The figures of a cardiac safety trial (``safety.png``): the population protocol's
APD90 change and abnormality incidence per compound (:func:`plot`), the CiPA protocol's
qNet against concentration and torsade metric scores (:func:`plot_qnet`), and the
exposure protocol's concentration, APD90 and qNet in time (:func:`plot_exposure`)."""

from __future__ import annotations


def plot_exposure(times, free, table, path, title: str = ""):
    """Free concentration (PK) and the per-beat APD90 and qNet against time."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    axes[0].plot(times, free, "k-", lw=1)
    axes[0].plot(table["time_h"], table["conc_nM"], "o", ms=2)
    axes[0].set_ylabel("free conc. (nM)")
    axes[1].plot(table["time_h"], table["APD90"], "o", ms=2)
    axes[1].set_ylabel("APD90 (ms)")
    axes[2].plot(table["time_h"], table["qNet"], "o", ms=2)
    axes[2].set_ylabel("qNet (C/F)")
    axes[2].set_xlabel("time (h)")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_qnet(doses, scores, path, title: str = ""):
    """qNet of the kept beat against concentration per compound, and the TMS per compound
    with the CiPA thresholds (colour: CiPA category)."""
    import matplotlib.pyplot as plt

    from ..models.ep._cipa_protocol import THRESHOLDS

    colour = {"high": "C3", "intermediate": "C0", "low": "C2"}
    fig, axes = plt.subplots(1, 2, figsize=(11, max(4.0, 0.22 * len(scores) + 1.5)))
    for c, t in doses.groupby("compound", sort=False):
        cat = t["cipa_category"].iloc[0]
        axes[0].semilogx(t["multiple"], t["qNet"], "o-", color=colour[cat], alpha=0.7, lw=1)
        axes[0].annotate(c, (t["multiple"].iloc[-1], t["qNet"].iloc[-1]), fontsize=6)
    axes[0].set_xlabel("concentration (x free Cmax)")
    axes[0].set_ylabel("qNet (C/F)")
    for cat, col in colour.items():
        axes[0].plot([], [], "o-", color=col, label=f"CiPA {cat}")
    axes[0].legend(fontsize=8)
    s = scores.reset_index(drop=True)
    y = range(len(s))
    axes[1].scatter(s["TMS"], list(y), c=[colour[c] for c in s["cipa_category"]])
    for i, r in s.iterrows():
        if not r["correct"]:
            axes[1].scatter([r["TMS"]], [i], facecolors="none", edgecolors="k", s=120)
    axes[1].set_yticks(list(y), list(s["compound"]), fontsize=7)
    axes[1].invert_yaxis()
    for thr in THRESHOLDS:
        axes[1].axvline(thr, ls="--", c="0.5")
    axes[1].set_xlabel("torsade metric score (C/F; circled: misclassified)")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(summary, path, title: str = ""):
    """APD90 change and incidence of abnormalities against concentration, per compound."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for c, t in summary.groupby("compound"):
        axes[0].semilogx(t["multiple"], t["dAPD90_median_pct"], "o-", label=c)
        axes[1].semilogx(t["multiple"], t["abnormal_pct"], "o-", label=c)
    axes[0].set_ylabel("median APD90 change (%)")
    axes[1].set_ylabel("models with EAD, RF or DF (%)")
    for ax in axes:
        ax.set_xlabel("concentration (x free Cmax)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
