"""Drug block of ion channels: conductance-scaling (simple pore block) model.

For a free concentration ``[D]`` a channel with Hill parameters ``(IC50, h)`` keeps
the fraction ``1 / (1 + ([D] / IC50)^h)`` of its conductance (Mirams GR, et al.
Cardiovasc Res 91:53-61, 2011; the CiPA "Hill" pharmacology of Li et al. 2017
without the dynamic hERG binding). Seven channels: IKr (hERG), ICaL, INaL, INa,
Ito, IKs, IK1.

:func:`compounds` loads the shipped table (``compounds.csv``) of the twelve CiPA
training compounds: IC50s and Hill coefficients (Li Z, Dutta S, et al. Circ Arrhythm
Electrophysiol 10:e004628, 2017, fitted to Crumb WJ Jr, et al. J Pharmacol Toxicol
Methods 81:251-262, 2016), free Cmax and the CiPA TdP risk category.
"""

from __future__ import annotations

import functools
import pathlib

import jax.numpy as jnp
import numpy as np

CHANNELS = ("IKr", "ICaL", "INaL", "INa", "Ito", "IKs", "IK1")

# the parameter each channel scales, per model
_TARGETS = {
    "ORd": dict(IKr="GKr", ICaL="PCa", INaL="GNaL", INa="GNa", Ito="Gto", IKs="GKs", IK1="GK1"),
    "LuoRudy1991": dict(IKr="gK", ICaL="gsi", INa="gNa", IK1="gK1"),
}
_FILE = pathlib.Path(__file__).with_name("compounds.csv")


@functools.cache
def _table():
    import pandas as pd

    return pd.read_csv(_FILE, comment="#").set_index("compound")


def compounds():
    """The reference compound table (pandas DataFrame indexed by compound name).

    Columns: ``Cmax_nM`` (free Cmax), ``risk`` (CiPA category: 2 high, 1
    intermediate, 0 low), ``<channel>_IC50`` (nM; NaN = no block) and ``<channel>_h``
    for the channels of :data:`CHANNELS`, ``source``.
    """
    return _table().copy()


def hill_block(conc, ic50, h):
    """Fraction of conductance left: ``1 / (1 + (conc / IC50)^h)``.

    Arguments:
        conc: free drug concentration (same unit as ``ic50``), >= 0.
        ic50: half-maximal inhibitory concentration; NaN or <= 0 means no block.
        h: Hill coefficient.

    Returns:
        The remaining fraction, in ``(0, 1]``.
    """
    conc = jnp.asarray(conc)
    ic50 = jnp.asarray(ic50, conc.dtype if jnp.issubdtype(conc.dtype, jnp.floating) else None)
    active = jnp.isfinite(ic50) & (ic50 > 0)
    safe = jnp.where(active, ic50, 1.0)
    frac = 1.0 / (1.0 + (jnp.maximum(conc, 0.0) / safe) ** h)
    return jnp.where(active, frac, 1.0)


def block_factors(compound: str, conc_nM) -> dict:
    """Remaining conductance fraction of each channel for a compound.

    Arguments:
        compound: a name from :func:`compounds` (case-insensitive).
        conc_nM: free concentration in nM (scalar or array).

    Returns:
        ``{channel: fraction}``.

    Raises:
        KeyError: unknown compound (the message lists the known ones).
    """
    tab = _table()
    key = compound.lower()
    if key not in tab.index:
        raise KeyError(f"unknown compound {compound!r}; known: {list(tab.index)}")
    row = tab.loc[key]
    return {
        ch: hill_block(conc_nM, float(row[f"{ch}_IC50"]), float(np.nan_to_num(row[f"{ch}_h"])))
        for ch in CHANNELS
    }


def apply_block(model, params: dict, factors: dict) -> dict:
    """Scale a model's conductances by block fractions.

    Arguments:
        model: an :class:`~twinjax.models.ep.ORd` or
            :class:`~twinjax.models.ep.LuoRudy1991`.
        params: ``{name: value}`` (missing conductances take their defaults).
        factors: ``{channel: fraction}`` (from :func:`block_factors`, or e.g.
            ``{"IKr": 0.15}`` for 85 % IKr block). For Luo-Rudy 1991, whose single
            delayed rectifier IK stands for IKr and IKs, the IKr factor is used.

    Returns:
        A new parameter dict.

    Raises:
        ValueError: a channel the model does not have, with a non-trivial factor.
    """
    targets = _TARGETS[type(model).__name__]
    out = dict(params)
    for ch, f in factors.items():
        if ch not in CHANNELS:
            raise ValueError(f"unknown channel {ch!r}; channels are {CHANNELS}")
        if ch not in targets:
            continue  # the model has no such current (e.g. INaL in LR1991)
        name = targets[ch]
        base = out.get(name, model.param(name).value)
        out[name] = jnp.asarray(base) * f
    return out
