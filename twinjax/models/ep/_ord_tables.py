"""The tables of the O'Hara-Rudy 2011 model (``_ord.py``): transmural scaling factors,
the CiPA conductance scalings, the states (gates and others) with units and
descriptions, the default (cold) initial state and the shipped 1 Hz steady states.

Sources: O'Hara T, Virag L, Varro A, Rudy Y. PLoS Comput Biol 7:e1002061, 2011, Text S1
(transmural factors, initial state); Dutta S, et al. Front Physiol 8:616, 2017, Table 2
(CiPA scalings).
"""

from __future__ import annotations

import json
import pathlib

S1 = "O'Hara et al. 2011 PLoS Comput Biol 7:e1002061, Text S1"
CELLTYPES = ("endo", "epi", "M")

# transmural factors (Text S1; index 0 endo, 1 epi, 2 M)
TRANSMURAL = dict(
    GNaL=(1.0, 0.6, 1.0),
    Gto=(1.0, 4.0, 4.0),
    PCa=(1.0, 1.2, 2.5),
    GKr=(1.0, 1.3, 0.8),
    GKs=(1.0, 1.4, 1.0),
    GK1=(1.0, 1.2, 1.3),
    Gncx=(1.0, 1.1, 1.4),
    Pnak=(1.0, 0.9, 0.7),
    GKb=(1.0, 0.6, 1.0),
    Jrel=(1.0, 1.0, 1.7),
    Jup=(1.0, 1.3, 1.0),
    cmdn=(1.0, 1.3, 1.0),
)
CIPA_SCALING = dict(GKr=1.119, GKs=1.648, GK1=1.414, PCa=1.018, GNaL=2.274)

#: ORd's gating variables (Rush-Larsen integrates them), in state order after
#: :data:`OTHER_STATES`; shared with the CiPA variant (``_cipa.py``).
GATES = (
    "m",
    "hf",
    "hs",
    "j",
    "hsp",
    "jp",
    "mL",
    "hL",
    "hLp",
    "a",
    "iF",
    "iS",
    "ap",
    "iFp",
    "iSp",
    "d",
    "ff",
    "fs",
    "fcaf",
    "fcas",
    "jca",
    "nca",
    "ffp",
    "fcafp",
    "xrf",
    "xrs",
    "xs1",
    "xs2",
    "xk1",
    "Jrelnp",
    "Jrelp",
)
#: ORd's states that are not gates: the voltage, concentrations and CaMKt.
OTHER_STATES = (
    "V", "Na_i", "Na_ss", "K_i", "K_ss", "Ca_i", "Ca_ss", "Ca_nsr", "Ca_jsr", "CaMKt"
)  # fmt: skip

STATE_UNITS = dict(
    V="mV",
    Na_i="mM",
    Na_ss="mM",
    K_i="mM",
    K_ss="mM",
    Ca_i="mM",
    Ca_ss="mM",
    Ca_nsr="mM",
    Ca_jsr="mM",
    CaMKt="1",
    Jrelnp="mM/ms",
    Jrelp="mM/ms",
)
STATE_DOCS = dict(
    V="membrane potential",
    Na_i="myoplasmic Na+",
    Na_ss="subspace Na+",
    K_i="myoplasmic K+",
    K_ss="subspace K+",
    Ca_i="myoplasmic Ca2+",
    Ca_ss="subspace Ca2+",
    Ca_nsr="network SR Ca2+",
    Ca_jsr="junctional SR Ca2+",
    CaMKt="fraction of trapped (autonomous) CaMKII",
    Jrelnp="SR release flux (non-phosphorylated)",
    Jrelp="SR release flux (phosphorylated)",
)

# default initial state of Text S1 / the mmt (not at steady state)
COLD_STATE = dict(
    V=-87.0,
    Na_i=7.0,
    Na_ss=7.0,
    K_i=145.0,
    K_ss=145.0,
    Ca_i=1e-4,
    Ca_ss=1e-4,
    Ca_nsr=1.2,
    Ca_jsr=1.2,
    CaMKt=0.0,
    m=0.0,
    hf=1.0,
    hs=1.0,
    j=1.0,
    hsp=1.0,
    jp=1.0,
    mL=0.0,
    hL=1.0,
    hLp=1.0,
    a=0.0,
    iF=1.0,
    iS=1.0,
    ap=0.0,
    iFp=1.0,
    iSp=1.0,
    d=0.0,
    ff=1.0,
    fs=1.0,
    fcaf=1.0,
    fcas=1.0,
    jca=1.0,
    nca=0.0,
    ffp=1.0,
    fcafp=1.0,
    xrf=0.0,
    xrs=0.0,
    xs1=0.0,
    xs2=0.0,
    xk1=1.0,
    Jrelnp=0.0,
    Jrelp=0.0,
)

STEADY_FILE = pathlib.Path(__file__).with_name("ord_steady_state.json")


def steady_states() -> dict:
    if STEADY_FILE.exists():
        return {k: v for k, v in json.loads(STEADY_FILE.read_text()).items() if k != "_doc"}
    return {}
