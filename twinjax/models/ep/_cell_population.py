"""Populations of models and in-silico drug trials.

A *population of models* (Britton OJ, et al. PNAS 110:E2098-E2105, 2013) samples
the conductances of a cell model around their baseline values, here log-normally
(``g = g0 * exp(sigma * z)``, ``z ~ N(0, 1)``; sigma = 0.3 gives a coefficient of
variation of about 31 %, similar to the +-100 % uniform range of Britton et al.),
paces every model to (near) steady state, and keeps the models whose biomarkers
fall inside experimental ranges. The default ranges are those of Passini E, et al.
Front Physiol 8:668, 2017 (Table 1: undiseased human ventricular trabeculae and
myocytes at 1 Hz, data of Britton et al. 2017 PLoS Comput Biol 13:e1005678 /
O'Hara et al. 2011).

An *in-silico drug trial* (Passini et al. 2017) applies each compound at multiples
of its free Cmax to every accepted model and reports the incidence of
repolarisation abnormalities (EADs, repolarisation failure) and the APD90 change.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _drugs
from ._solver import RushLarsen, pace

# (lower, upper) per biomarker: Passini et al. 2017 Front Physiol 8:668, Table 1
PASSINI_2017_RANGES = {
    "APD40": (85.0, 320.0),
    "APD50": (110.0, 350.0),
    "APD90": (180.0, 440.0),
    "tri_90_40": (50.0, 150.0),
    "V_peak": (10.0, 55.0),
    "V_rest": (-95.0, -80.0),
    "dVdt_max": (100.0, 1000.0),
}

# the ORd conductances varied by Passini et al. 2017 (their ORd population)
ORD_VARIED = (
    "GNa",
    "GNaL",
    "Gto",
    "PCa",
    "GKr",
    "GKs",
    "GK1",
    "Gncx",
    "Pnak",
    "Jrel_scale",
    "Jup_scale",
)


def sample(model, key, n: int, names=ORD_VARIED, sigma: float = 0.3, dtype=None) -> dict:
    """Log-normal conductance scalings around the model's defaults.

    Arguments:
        model: a cell model.
        key: a ``jax.random`` key.
        n: number of models.
        names: the parameters to vary.
        sigma: standard deviation of ``log(g / g0)``.
        dtype: floating dtype.

    Returns:
        ``{name: (n,)}`` parameter values (the others keep their defaults).
    """
    base = model.defaults(dtype)
    z = jax.random.normal(key, (len(names), n), dtype=base[names[0]].dtype)
    return {k: base[k] * jnp.exp(sigma * z[i]) for i, k in enumerate(names)}


def _with_tri(bio: dict) -> dict:
    out = {k: np.asarray(v) for k, v in bio.items()}
    out["tri_90_40"] = out["APD90"] - out["APD40"]
    return out


def accept(biomarkers: dict, ranges: dict | None = None) -> np.ndarray:
    """Boolean mask of models whose biomarkers lie in the ranges (and are finite).

    Arguments:
        biomarkers: ``{name: (N,)}`` biomarkers of one beat (e.g. ``result.last()``).
        ranges: ``{name: (lower, upper)}``; default :data:`PASSINI_2017_RANGES`.

    Returns:
        ``(N,)`` bool array.
    """
    ranges = PASSINI_2017_RANGES if ranges is None else ranges
    b = _with_tri(biomarkers)
    ok = ~np.asarray(b["EAD"]) & ~np.asarray(b["RF"]) & ~np.asarray(b.get("DF", False))
    for k, (lo, hi) in ranges.items():
        v = b[k]
        ok &= np.isfinite(v) & (v >= lo) & (v <= hi)
    return ok


def calibrate(
    model,
    key,
    n: int,
    *,
    n_beats: int = 50,
    sigma: float = 0.3,
    names=ORD_VARIED,
    ranges=None,
    params=None,
    solver: RushLarsen | None = None,
):
    """Sample, pace and accept a population of models.

    Arguments:
        model: a cell model.
        key: a ``jax.random`` key.
        n: number of candidate models.
        n_beats: beats paced from ``model.init`` before biomarkers are taken.
        sigma, names: see :func:`sample`.
        ranges: acceptance ranges (default Passini et al. 2017).
        params: fixed parameters applied to everyone (e.g. ``{"BCL": 1000.0}``).
        solver: the :class:`RushLarsen` settings.

    Returns:
        ``(params, state, biomarkers, accepted)``: the sampled ``{name: (n,)}``,
        the final state, the last beat's biomarkers and the ``(n,)`` acceptance mask.
    """
    p = {**(params or {}), **sample(model, key, n, names, sigma)}
    res = pace(model, p, n_beats, record="last", solver=solver)
    bio = res.last()
    ok = accept(bio, ranges) & (np.asarray(res.status) == 0)
    return p, res.state, bio, ok


def drug_screen(
    model,
    params: dict,
    state: dict,
    compounds,
    multiples=(1.0, 10.0),
    *,
    n_beats: int = 20,
    bcl: float | None = None,
    solver: RushLarsen | None = None,
):
    """In-silico drug trial: population x compounds x concentrations.

    Every (compound, concentration) runs the whole population in one batched call,
    starting from the control steady state ``state``.

    Arguments:
        model: a cell model.
        params: the population's parameters ``{name: (N,)}``.
        state: the population's control state ``{name: (N,)}`` (e.g. from
            :func:`calibrate`).
        compounds: compound names of :func:`twinjax.models.ep.drugs.compounds`.
        multiples: concentrations as multiples of each compound's free Cmax.
        n_beats: beats paced under drug before biomarkers are taken.
        bcl: cycle length (ms) under drug (default: the population's).
        solver: the :class:`RushLarsen` settings.

    Returns:
        A pandas DataFrame with one row per model, compound and concentration:
        ``compound, multiple, conc_nM, model, APD90, APD90_control, dAPD90_pct, EAD,
        RF, DF, abnormal, qNet``; ``abnormal`` is EAD, RF, DF or a failed solve, and
        ``dAPD90_pct`` is NaN where the beat had no action potential (DF).
    """
    import pandas as pd

    tab = _drugs.compounds()
    extra = {} if bcl is None else {"BCL": bcl}
    ctrl = pace(model, {**params, **extra}, n_beats, y0=state, record="last", solver=solver)
    apd0 = np.asarray(ctrl.last()["APD90"])
    rows = []
    for c in compounds:
        cmax = float(tab.loc[c.lower(), "Cmax_nM"])
        for m in multiples:
            conc = m * cmax
            p = _drugs.apply_block(model, {**params, **extra}, _drugs.block_factors(c, conc))
            r = pace(model, p, n_beats, y0=state, record="last", solver=solver)
            b = {k: np.asarray(v) for k, v in r.last().items()}
            ab = b["EAD"] | b["RF"] | b["DF"] | (np.asarray(r.status) != 0)
            # no action potential: its "APD" is the decay of the stimulus response
            d_apd = np.where(b["DF"], np.nan, 100.0 * (b["APD90"] - apd0) / apd0)
            rows.append(
                pd.DataFrame(
                    dict(
                        compound=c,
                        multiple=m,
                        conc_nM=conc,
                        model=np.arange(len(apd0)),
                        APD90=b["APD90"],
                        APD90_control=apd0,
                        dAPD90_pct=d_apd,
                        EAD=b["EAD"],
                        RF=b["RF"],
                        DF=b["DF"],
                        abnormal=ab,
                        qNet=b["qNet"],
                    )
                )
            )
    return pd.concat(rows, ignore_index=True)


RISK_NAMES = {0: "low", 1: "intermediate", 2: "high"}


def summarise(trial) -> tuple:
    """Per compound and concentration: incidence of abnormalities, APD90 change, risk.

    Risk class (a documented heuristic in the spirit of Passini et al. 2017, not
    their validated TdP score): *high* if repolarisation abnormalities (EAD or RF)
    occur in any model at <= 10x free Cmax; *intermediate* if they occur only above
    10x Cmax, or the median APD90 prolongation at <= 10x Cmax is >= 10 %; *low*
    otherwise. Depolarisation failure (DF, loss of excitability under sodium and
    calcium channel block) is reported but does not enter this torsade risk class.
    The median APD90 change is over the models that had an action potential.

    Arguments:
        trial: the DataFrame of :func:`drug_screen`.

    Returns:
        ``(table, risk)``: a per (compound, multiple) DataFrame with
        ``abnormal_pct, repol_abnormal_pct, EAD_pct, RF_pct, DF_pct,
        dAPD90_median_pct``, and a per-compound
        DataFrame with the predicted ``risk`` (and the CiPA category, if known).
    """
    import pandas as pd

    trial = trial.assign(repol=trial["EAD"] | trial["RF"])
    g = trial.groupby(["compound", "multiple"])
    table = pd.DataFrame(
        {
            "abnormal_pct": 100.0 * g["abnormal"].mean(),
            "repol_abnormal_pct": 100.0 * g["repol"].mean(),
            "EAD_pct": 100.0 * g["EAD"].mean(),
            "RF_pct": 100.0 * g["RF"].mean(),
            "DF_pct": 100.0 * g["DF"].mean(),
            "dAPD90_median_pct": g["dAPD90_pct"].median(),
        }
    ).reset_index()
    cip = _drugs.compounds()["risk"]
    risks = []
    for c, t in table.groupby("compound"):
        low = t[t["multiple"] <= 10.0]
        high = t[t["multiple"] > 10.0]
        if (low["repol_abnormal_pct"] > 0).any():
            r = 2
        elif (high["repol_abnormal_pct"] > 0).any() or (low["dAPD90_median_pct"] >= 10.0).any():
            r = 1
        else:
            r = 0
        cipa = int(cip.loc[c.lower()]) if c.lower() in cip.index else None
        risks.append(
            dict(
                compound=c,
                risk=RISK_NAMES[r],
                cipa_category=RISK_NAMES.get(cipa) if cipa is not None else None,
            )
        )
    return table, pd.DataFrame(risks).set_index("compound")
