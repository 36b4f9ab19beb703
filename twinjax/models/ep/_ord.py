"""O'Hara-Rudy 2011 (ORd) human ventricular action potential model.

O'Hara T, Virag L, Varro A, Rudy Y. Simulation of the undiseased human cardiac
ventricular action potential: model formulation and experimental validation.
PLoS Comput Biol 7:e1002061, 2011. doi:10.1371/journal.pcbi.1002061.

Equations and constants follow the paper's supplement (Text S1) and the authors'
Matlab code, as transcribed in the Myokit description ``ohara-2011.mmt`` (M.
Clerx, version 2023-02-08, which was checked against the original code by
comparing derivatives); the code here is an independent JAX implementation. Page
numbers below refer to Text S1. Units: mV, ms, A/F (= uA/uF), mM, uL, cm.

Cell types (``celltype``): ``"endo"``, ``"epi"``, ``"M"``, with the transmural
scaling factors of Text S1 (applied on top of the endocardial base values in the
parameter table, so a population scales the base values).

Optional CiPA conductance scalings (``cipa=True``) multiply GKr 1.119, GKs 1.648,
GK1 1.414, PCa 1.018, GNaL 2.274 (Dutta S, et al. Front Physiol 8:616, 2017,
Table 2 / optimisation of ORd to human data, keeping the Hodgkin-Huxley IKr).
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from ...ode import Param, State
from ...ode._param import positive
from ._cell import CellModel
from ._ord_tables import (
    CELLTYPES,
    CIPA_SCALING,
    COLD_STATE,
    GATES,
    OTHER_STATES,
    S1,
    STATE_DOCS,
    STATE_UNITS,
    TRANSMURAL,
    steady_states,
)
from ._pacing import pacing_params


def _xm1(x):
    """``x / (exp(x) - 1)``, finite at 0."""
    small = jnp.abs(x) < 1e-6
    xs = jnp.where(small, 1.0, x)
    return jnp.where(small, 1.0 - 0.5 * x, xs / jnp.expm1(xs))


def _sig(v, vh, k):
    """``1 / (1 + exp((v + vh) / k))``."""
    return 1.0 / (1.0 + jnp.exp((v + vh) / k))


def _ncx(V, na, ca, nao, cao, FRT):
    """Na/Ca exchanger turnover (JncxNa + 2 JncxCa) and allosteric factor (p. 12)."""
    kna1, kna2, kna3, kasymm = 15.0, 5.0, 88.12, 12.5
    wna, wca, wnaca, kcaon, kcaoff = 6.0e4, 6.0e4, 5.0e3, 1.5e6, 5.0e3
    qna, qca = 0.5224, 0.1670
    hca = jnp.exp(qca * V * FRT)
    hna = jnp.exp(qna * V * FRT)
    h1 = 1 + na / kna3 * (1 + hna)
    h2 = na * hna / (kna3 * h1)
    h3 = 1.0 / h1
    h4 = 1.0 + na / kna1 * (1 + na / kna2)
    h5 = na * na / (h4 * kna1 * kna2)
    h6 = 1.0 / h4
    h7 = 1.0 + nao / kna3 * (1.0 + 1.0 / hna)
    h8 = nao / (kna3 * hna * h7)
    h9 = 1.0 / h7
    h10 = kasymm + 1.0 + nao / kna1 * (1.0 + nao / kna2)
    h11 = nao * nao / (h10 * kna1 * kna2)
    h12 = 1.0 / h10
    k1 = h12 * cao * kcaon
    k2 = kcaoff
    k3p = h9 * wca
    k3pp = h8 * wnaca
    k3 = k3p + k3pp
    k4p = h3 * wca / hca
    k4pp = h2 * wnaca
    k4 = k4p + k4pp
    k5 = kcaoff
    k6 = h6 * ca * kcaon
    k7 = h5 * h2 * wna
    k8 = h8 * h11 * wna
    x1 = k2 * k4 * (k7 + k6) + k5 * k7 * (k2 + k3)
    x2 = k1 * k7 * (k4 + k5) + k4 * k6 * (k1 + k8)
    x3 = k1 * k3 * (k7 + k6) + k8 * k6 * (k2 + k3)
    x4 = k2 * k8 * (k4 + k5) + k3 * k5 * (k1 + k8)
    s = x1 + x2 + x3 + x4
    E1, E2, E3, E4 = x1 / s, x2 / s, x3 / s, x4 / s
    allo = 1.0 / (1.0 + (150e-6 / ca) ** 2)
    JncxNa = 3.0 * (E4 * k7 - E1 * k8) + E3 * k4pp - E2 * k3pp
    JncxCa = E2 * k2 - E1 * k1
    return allo * (JncxNa + 2.0 * JncxCa)


class ORd(CellModel):
    """The O'Hara-Rudy 2011 human ventricular myocyte (41 states).

    Arguments:
        celltype: ``"endo"`` (default), ``"epi"`` or ``"M"``.
        cipa: apply the CiPA conductance scalings of Dutta et al. 2017.

    Currents (A/F): INa, INaL, Ito, ICaL (+ ICaNa, ICaK), IKr, IKs, IK1, INaCa
    (myoplasm + subspace), INaK, INab, ICab, IKb, IpCa. Stimulus: -80 A/F for 0.5
    ms every BCL (Text S1 p. 5; the Matlab code's protocol). The stimulus current
    is carried by K+ (enters dK_i/dt), as in the authors' code.

    ``init`` returns the state after pacing this implementation to steady state at
    1 Hz from Text S1's initial values (500 beats; stored in
    ``ord_steady_state.json``), or Text S1's initial values if not available.

    Reference: O'Hara T, Virag L, Varro A, Rudy Y. PLoS Comput Biol 7:e1002061, 2011.
    """

    celltype: str = "endo"
    cipa: bool = False

    gates: ClassVar[tuple[str, ...]] = GATES
    qnet_currents: ClassVar[tuple[str, ...]] = ("INaL", "ICaL", "Ito", "IKr", "IKs", "IK1")
    time_unit = "ms"
    reference = "O'Hara T, Virag L, Varro A, Rudy Y. PLoS Comput Biol 7:e1002061, 2011"

    def __check_init__(self):
        if self.celltype not in CELLTYPES:
            raise ValueError(f"celltype must be one of {CELLTYPES}, got {self.celltype!r}")

    @property
    def _i(self) -> int:
        return CELLTYPES.index(self.celltype)

    @property
    def states(self) -> tuple[State, ...]:  # type: ignore[override]
        out = [State(k, STATE_UNITS.get(k, "1"), STATE_DOCS.get(k, "")) for k in OTHER_STATES]
        out += [
            State(k, STATE_UNITS.get(k, "1"), STATE_DOCS.get(k, "gating variable")) for k in GATES
        ]
        return tuple(out)

    @property
    def params(self) -> tuple[Param, ...]:  # type: ignore[override]
        def g(name, value, unit, doc, page):
            return positive(
                name,
                value,
                unit,
                upper=1e3 * value,
                source=f"{S1}, p. {page}",
                doc=doc + " (endocardial base value)",
            )

        return (
            g("GNa", 75.0, "mS/uF", "max. INa conductance", 6),
            g("GNaL", 0.0075, "mS/uF", "max. INaL conductance", 7),
            g("Gto", 0.02, "mS/uF", "max. Ito conductance", 8),
            g("PCa", 1e-4, "cm/s", "ICaL permeability to Ca2+", 9),
            g("GKr", 0.046, "mS/uF", "max. IKr conductance", 11),
            g("GKs", 0.0034, "mS/uF", "max. IKs conductance", 11),
            g("GK1", 0.1908, "mS/uF", "max. IK1 conductance", 12),
            g("Gncx", 0.0008, "A/F", "INaCa scaling", 12),
            g("Pnak", 30.0, "A/F", "INaK scaling", 14),
            g("GKb", 0.003, "mS/uF", "IKb conductance", 15),
            g("PNab", 3.75e-10, "cm/s", "INab permeability", 15),
            g("PCab", 2.5e-8, "cm/s", "ICab permeability", 15),
            g("GpCa", 0.0005, "A/F", "IpCa maximum", 15),
            positive(
                "Jrel_scale",
                1.0,
                "1",
                upper=100.0,
                source=f"{S1}, p. 17",
                doc="scaling of SR release (RyR) flux",
            ),
            positive(
                "Jup_scale",
                1.0,
                "1",
                upper=100.0,
                source=f"{S1}, p. 17",
                doc="scaling of SERCA uptake",
            ),
            positive(
                "Na_o", 140.0, "mM", upper=500.0, source=f"{S1}, p. 5", doc="extracellular Na+"
            ),
            positive("Ca_o", 1.8, "mM", upper=50.0, source=f"{S1}, p. 5", doc="extracellular Ca2+"),
            positive("K_o", 5.4, "mM", upper=100.0, source=f"{S1}, p. 5", doc="extracellular K+"),
            *pacing_params(1000.0, 80.0, 0.5, source=f"{S1}, p. 5 (Matlab code protocol)"),
        )

    def init(self, p):
        z = 0.0 * p["GNa"]
        ss = steady_states().get(self._key())
        src = ss if ss is not None else COLD_STATE
        return {k: jnp.asarray(src[k], z.dtype) + z for k in self.state_names}

    def _key(self) -> str:
        return f"{self.celltype}{'-cipa' if self.cipa else ''}"

    def _fac(self, name):
        f = TRANSMURAL[name][self._i]
        if self.cipa:
            f *= CIPA_SCALING.get(name, 1.0)
        return f

    def evaluate(self, t, y, p):
        V = y["V"]
        nai, nass, ki, kss = y["Na_i"], y["Na_ss"], y["K_i"], y["K_ss"]
        cai, cass, cansr, cajsr = y["Ca_i"], y["Ca_ss"], y["Ca_nsr"], y["Ca_jsr"]
        nao, cao, ko = p["Na_o"], p["Ca_o"], p["K_o"]
        epi = self.celltype == "epi"
        # constants (p. 2, 6)
        R, T, F = 8314.0, 310.0, 96485.0
        RTF = R * T / F
        FRT = F / (R * T)
        L, rad = 0.01, 0.0011
        vcell = 1000 * 3.14 * rad * rad * L
        Ageo = 2 * 3.14 * rad * rad + 2 * 3.14 * rad * L
        Acap = 2 * Ageo
        vmyo, vnsr, vjsr, vss = 0.68 * vcell, 0.0552 * vcell, 0.0048 * vcell, 0.02 * vcell
        AFC = Acap / F
        # CaMKII (p. 16)
        CaMKo, KmCaM, KmCaMK, aCaMK, bCaMK = 0.05, 0.0015, 0.15, 0.05, 0.00068
        CaMKb = CaMKo * (1.0 - y["CaMKt"]) / (1.0 + KmCaM / cass)
        CaMKa = CaMKb + y["CaMKt"]
        fp = 1.0 / (1.0 + KmCaMK / CaMKa)
        # reversal potentials (p. 6)
        ENa = RTF * jnp.log(nao / nai)
        EK = RTF * jnp.log(ko / ki)
        EKs = RTF * jnp.log((ko + 0.01833 * nao) / (ki + 0.01833 * nai))
        gates = {}
        # INa (p. 6)
        sm = _sig(V, 39.57, -9.871)
        tm = 1.0 / (6.765 * jnp.exp((V + 11.64) / 34.77) + 8.552 * jnp.exp(-(V + 77.42) / 5.955))
        sh = _sig(V, 82.9, 6.086)
        thf = 1.0 / (
            1.432e-5 * jnp.exp(-(V + 1.196) / 6.285) + 6.149 * jnp.exp((V + 0.5096) / 20.27)
        )
        ths = 1.0 / (
            0.009794 * jnp.exp(-(V + 17.95) / 28.05) + 0.3343 * jnp.exp((V + 5.730) / 56.66)
        )
        tj = 2.038 + 1.0 / (
            0.02136 * jnp.exp(-(V + 100.6) / 8.281) + 0.3052 * jnp.exp((V + 0.9941) / 38.45)
        )
        shsp = _sig(V, 89.1, 6.086)
        gates.update(
            m=(sm, tm),
            hf=(sh, thf),
            hs=(sh, ths),
            j=(sh, tj),
            hsp=(shsp, 3.0 * ths),
            jp=(sh, 1.46 * tj),
        )
        Ahf = 0.99
        h = Ahf * y["hf"] + (1 - Ahf) * y["hs"]
        hp = Ahf * y["hf"] + (1 - Ahf) * y["hsp"]
        INa = p["GNa"] * (V - ENa) * y["m"] ** 3 * ((1.0 - fp) * h * y["j"] + fp * hp * y["jp"])
        # INaL (p. 7)
        smL = _sig(V, 42.85, -5.264)
        shL = _sig(V, 87.61, 7.488)
        shLp = _sig(V, 93.81, 7.488)
        gates.update(mL=(smL, tm), hL=(shL, 200.0 + 0.0 * V), hLp=(shLp, 600.0 + 0.0 * V))
        INaL = (
            self._fac("GNaL")
            * p["GNaL"]
            * (V - ENa)
            * y["mL"]
            * ((1.0 - fp) * y["hL"] + fp * y["hLp"])
        )
        # Ito (p. 8)
        sa = _sig(V, -14.34, -14.82)
        ta = 1.0515 / (
            1.0 / (1.2089 * (1.0 + jnp.exp(-(V - 18.4099) / 29.3814)))
            + 3.5 / (1.0 + jnp.exp((V + 100.0) / 29.3814))
        )
        si = _sig(V, 43.94, 5.711)
        delta_epi = 1.0 - 0.95 / (1.0 + jnp.exp((V + 70.0) / 5.0)) if epi else 1.0
        tif = (
            4.562
            + 1.0 / (0.3933 * jnp.exp(-(V + 100.0) / 100.0) + 0.08004 * jnp.exp((V + 50.0) / 16.59))
        ) * delta_epi
        tis = (
            23.62
            + 1.0
            / (0.001416 * jnp.exp(-(V + 96.52) / 59.05) + 1.780e-8 * jnp.exp((V + 114.1) / 8.079))
        ) * delta_epi
        AiF = 1.0 / (1.0 + jnp.exp((V - 213.6) / 151.2))
        sap = _sig(V, -24.34, -14.82)
        dti_develop = 1.354 + 1.0e-4 / (
            jnp.exp((V - 167.4) / 15.89) + jnp.exp(-(V - 12.23) / 0.2154)
        )
        dti_recover = 1.0 - 0.5 / (1.0 + jnp.exp((V + 70.0) / 20.0))
        gates.update(
            a=(sa, ta),
            iF=(si, tif),
            iS=(si, tis),
            ap=(sap, ta),
            iFp=(si, dti_develop * dti_recover * tif),
            iSp=(si, dti_develop * dti_recover * tis),
        )
        i_ = AiF * y["iF"] + (1 - AiF) * y["iS"]
        ip = AiF * y["iFp"] + (1 - AiF) * y["iSp"]
        Ito = (
            self._fac("Gto") * p["Gto"] * (V - EK) * ((1.0 - fp) * y["a"] * i_ + fp * y["ap"] * ip)
        )
        # ICaL, ICaNa, ICaK (p. 9)
        sd = _sig(V, 3.940, -4.230)
        td = 0.6 + 1.0 / (jnp.exp(-0.05 * (V + 6.0)) + jnp.exp(0.09 * (V + 14.0)))
        sf = _sig(V, 19.58, 3.696)
        tff = 7.0 + 1.0 / (
            0.0045 * jnp.exp(-(V + 20.0) / 10.0) + 0.0045 * jnp.exp((V + 20.0) / 10.0)
        )
        tfs = 1000.0 + 1.0 / (
            0.000035 * jnp.exp(-(V + 5.0) / 4.0) + 0.000035 * jnp.exp((V + 5.0) / 6.0)
        )
        tfcaf = 7.0 + 1.0 / (0.04 * jnp.exp(-(V - 4.0) / 7.0) + 0.04 * jnp.exp((V - 4.0) / 7.0))
        tfcas = 100.0 + 1.0 / (0.00012 * jnp.exp(-V / 3.0) + 0.00012 * jnp.exp(V / 7.0))
        Afcaf = 0.3 + 0.6 / (1.0 + jnp.exp((V - 10.0) / 10.0))
        Kmn, k2n = 0.002, 1000.0
        km2n = y["jca"] * 1.0
        anca = 1.0 / (k2n / km2n + (1.0 + Kmn / cass) ** 4)
        gates.update(
            d=(sd, td),
            ff=(sf, tff),
            fs=(sf, tfs),
            fcaf=(sf, tfcaf),
            fcas=(sf, tfcas),
            jca=(sf, 75.0 + 0.0 * V),
            ffp=(sf, 2.5 * tff),
            fcafp=(sf, 2.5 * tfcaf),
            nca=(anca * k2n / km2n, 1.0 / km2n),
        )
        Aff = 0.6
        f = Aff * y["ff"] + (1 - Aff) * y["fs"]
        fca = Afcaf * y["fcaf"] + (1 - Afcaf) * y["fcas"]
        fpp = Aff * y["ffp"] + (1 - Aff) * y["fs"]
        fcap = Afcaf * y["fcafp"] + (1 - Afcaf) * y["fcas"]
        vf = V * FRT
        PhiCaL = 2.0 * F * (cass * jnp.exp(2.0 * vf) - 0.341 * cao) * _xm1(2.0 * vf)
        PhiCaNa = F * (0.75 * nass * jnp.exp(vf) - 0.75 * nao) * _xm1(vf)
        PhiCaK = F * (0.75 * kss * jnp.exp(vf) - 0.75 * ko) * _xm1(vf)
        PCa = self._fac("PCa") * p["PCa"]
        nca = y["nca"]
        gL = y["d"] * (f * (1.0 - nca) + y["jca"] * fca * nca)
        gLp = y["d"] * (fpp * (1.0 - nca) + y["jca"] * fcap * nca)
        w = (1.0 - fp) * gL + fp * 1.1 * gLp
        ICaL = PCa * PhiCaL * w
        ICaNa = 0.00125 * PCa * PhiCaNa * w
        ICaK = 3.574e-4 * PCa * PhiCaK * w
        # IKr (p. 11)
        sxr = _sig(V, 8.337, -6.789)
        txf = 12.98 + 1.0 / (
            0.3652 * jnp.exp((V - 31.66) / 3.869) + 4.123e-5 * jnp.exp(-(V - 47.78) / 20.38)
        )
        txs = 1.865 + 1.0 / (
            0.06629 * jnp.exp((V - 34.70) / 7.355) + 1.128e-5 * jnp.exp(-(V - 29.74) / 25.94)
        )
        gates.update(xrf=(sxr, txf), xrs=(sxr, txs))
        Axrf = 1.0 / (1.0 + jnp.exp((V + 54.81) / 38.21))
        xr = Axrf * y["xrf"] + (1 - Axrf) * y["xrs"]
        rkr = _sig(V, 55.0, 75.0) * _sig(V, -10.0, 30.0)
        IKr = self._fac("GKr") * p["GKr"] * jnp.sqrt(ko / 5.4) * xr * rkr * (V - EK)
        # IKs (p. 11)
        sxs = _sig(V, 11.60, -8.932)
        txs1 = 817.3 + 1.0 / (
            2.326e-4 * jnp.exp((V + 48.28) / 17.80) + 0.001292 * jnp.exp(-(V + 210.0) / 230.0)
        )
        txs2 = 1.0 / (0.01 * jnp.exp((V - 50.0) / 20.0) + 0.0193 * jnp.exp(-(V + 66.54) / 31.0))
        gates.update(xs1=(sxs, txs1), xs2=(sxs, txs2))
        KsCa = 1.0 + 0.6 / (1.0 + (3.8e-5 / cai) ** 1.4)
        IKs = self._fac("GKs") * p["GKs"] * KsCa * y["xs1"] * y["xs2"] * (V - EKs)
        # IK1 (p. 12)
        sxk1 = 1.0 / (1.0 + jnp.exp(-(V + 2.5538 * ko + 144.59) / (1.5692 * ko + 3.8115)))
        txk1 = 122.2 / (jnp.exp(-(V + 127.2) / 20.36) + jnp.exp((V + 236.8) / 69.33))
        gates.update(xk1=(sxk1, txk1))
        rk1 = 1.0 / (1.0 + jnp.exp((V + 105.8 - 2.6 * ko) / 9.493))
        IK1 = self._fac("GK1") * p["GK1"] * jnp.sqrt(ko) * rk1 * y["xk1"] * (V - EK)
        # INaCa (p. 12): 80 % myoplasm, 20 % subspace
        Gncx = self._fac("Gncx") * p["Gncx"]
        INaCa_i = 0.8 * Gncx * _ncx(V, nai, cai, nao, cao, FRT)
        INaCa_ss = 0.2 * Gncx * _ncx(V, nass, cass, nao, cao, FRT)
        # INaK (p. 14)
        k1p, k1m, k2p, k2m = 949.5, 182.4, 687.2, 39.4
        k3p, k3m, k4p, k4m = 1899.0, 79300.0, 639.0, 40.0
        Knai0, Knao0, delta = 9.073, 27.78, -0.1550
        Knai = Knai0 * jnp.exp(delta * V * FRT / 3.0)
        Knao = Knao0 * jnp.exp((1.0 - delta) * V * FRT / 3.0)
        Kki, Kko, MgADP, MgATP, Kmgatp = 0.5, 0.3582, 0.05, 9.8, 1.698e-7
        H, eP, Khp, Knap, Kxkur = 1.0e-7, 4.2, 1.698e-7, 224.0, 292.0
        P = eP / (1.0 + H / Khp + nai / Knap + ki / Kxkur)
        dn_i = (1.0 + nai / Knai) ** 3 + (1.0 + ki / Kki) ** 2 - 1.0
        dn_o = (1.0 + nao / Knao) ** 3 + (1.0 + ko / Kko) ** 2 - 1.0
        a1 = k1p * (nai / Knai) ** 3 / dn_i
        b1 = k1m * MgADP
        a2 = k2p
        b2 = k2m * (nao / Knao) ** 3 / dn_o
        a3 = k3p * (ko / Kko) ** 2 / dn_o
        b3 = k3m * P * H / (1.0 + MgATP / Kmgatp)
        a4 = k4p * MgATP / Kmgatp / (1.0 + MgATP / Kmgatp)
        b4 = k4m * (ki / Kki) ** 2 / dn_i
        x1 = a4 * a1 * a2 + b2 * b4 * b3 + a2 * b4 * b3 + b3 * a1 * a2
        x2 = b2 * b1 * b4 + a1 * a2 * a3 + a3 * b1 * b4 + a2 * a3 * b4
        x3 = a2 * a3 * a4 + b3 * b2 * b1 + b2 * b1 * a4 + a3 * a4 * b1
        x4 = b4 * b3 * b2 + a3 * a4 * a1 + b2 * a4 * a1 + b3 * b2 * a1
        s = x1 + x2 + x3 + x4
        E1, E2, E3, E4 = x1 / s, x2 / s, x3 / s, x4 / s
        JnakNa = 3.0 * (E1 * a3 - E2 * b3)
        JnakK = 2.0 * (E4 * b1 - E3 * a1)
        INaK = self._fac("Pnak") * p["Pnak"] * (JnakNa + JnakK)
        # background currents and pump (p. 15)
        xkb = 1.0 / (1.0 + jnp.exp(-(V - 14.48) / 18.34))
        IKb = self._fac("GKb") * p["GKb"] * xkb * (V - EK)
        INab = p["PNab"] * F * (nai * jnp.exp(vf) - nao) * _xm1(vf)
        ICab = p["PCab"] * 2.0 * F * (cai * jnp.exp(2.0 * vf) - 0.341 * cao) * _xm1(2.0 * vf)
        IpCa = p["GpCa"] * cai / (0.0005 + cai)
        Istim = self.stimulus(t, p)
        # fluxes (p. 16-17)
        JdiffNa = (nass - nai) / 2.0
        JdiffK = (kss - ki) / 2.0
        Jdiff = (cass - cai) / 0.2
        bt = 4.75
        a_rel = 0.5 * bt
        Jrel_inf = (
            self._fac("Jrel") * p["Jrel_scale"] * a_rel * (-ICaL) / (1.0 + (1.5 / cajsr) ** 8)
        )
        tau_rel = jnp.maximum(bt / (1.0 + 0.0123 / cajsr), 0.001)
        btp = 1.25 * bt
        a_relp = 0.5 * btp
        Jrel_infp = (
            self._fac("Jrel") * p["Jrel_scale"] * a_relp * (-ICaL) / (1.0 + (1.5 / cajsr) ** 8)
        )
        tau_relp = jnp.maximum(btp / (1.0 + 0.0123 / cajsr), 0.001)
        gates.update(Jrelnp=(Jrel_inf, tau_rel), Jrelp=(Jrel_infp, tau_relp))
        Jrel = (1.0 - fp) * y["Jrelnp"] + fp * y["Jrelp"]
        fup = self._fac("Jup") * p["Jup_scale"]
        Jupnp = fup * 0.004375 * cai / (cai + 0.00092)
        Jupp = fup * 2.75 * 0.004375 * cai / (cai + 0.00092 - 0.00017)
        Jleak = 0.0039375 * cansr / 15.0
        Jup = (1.0 - fp) * Jupnp + fp * Jupp - Jleak
        Jtr = (cansr - cajsr) / 100.0
        # concentrations and buffers (p. 18)
        cmdnmax = 0.05 * self._fac("cmdn")
        trpnmax, kmcmdn, kmtrpn = 0.07, 0.00238, 0.0005
        BSRmax, KmBSR, BSLmax, KmBSL = 0.047, 0.00087, 1.124, 0.0087
        csqnmax, kmcsqn = 10.0, 0.8
        Iion = (
            INa
            + INaL
            + Ito
            + ICaL
            + ICaNa
            + ICaK
            + IKr
            + IKs
            + IK1
            + INaCa_i
            + INaCa_ss
            + INaK
            + INab
            + IKb
            + IpCa
            + ICab
        )
        d = {}
        d["V"] = -(Iion + Istim)
        d["CaMKt"] = aCaMK * CaMKb * CaMKa - bCaMK * y["CaMKt"]
        d["Na_i"] = (
            -(INa + INaL + INab + 3.0 * INaCa_i + 3.0 * INaK) * AFC / vmyo + JdiffNa * vss / vmyo
        )
        d["Na_ss"] = -(ICaNa + 3.0 * INaCa_ss) * AFC / vss - JdiffNa
        d["K_i"] = (
            -(Ito + IKr + IKs + IK1 + IKb + Istim - 2.0 * INaK) * AFC / vmyo + JdiffK * vss / vmyo
        )
        d["K_ss"] = -ICaK * AFC / vss - JdiffK
        Bcai = 1.0 / (
            1.0 + cmdnmax * kmcmdn / (kmcmdn + cai) ** 2 + trpnmax * kmtrpn / (kmtrpn + cai) ** 2
        )
        d["Ca_i"] = Bcai * (
            -(IpCa + ICab - 2.0 * INaCa_i) * AFC / (2.0 * vmyo)
            - Jup * vnsr / vmyo
            + Jdiff * vss / vmyo
        )
        Bcass = 1.0 / (
            1.0 + BSRmax * KmBSR / (KmBSR + cass) ** 2 + BSLmax * KmBSL / (KmBSL + cass) ** 2
        )
        d["Ca_ss"] = Bcass * (
            -(ICaL - 2.0 * INaCa_ss) * AFC / (2.0 * vss) + Jrel * vjsr / vss - Jdiff
        )
        d["Ca_nsr"] = Jup - Jtr * vjsr / vnsr
        Bcajsr = 1.0 / (1.0 + csqnmax * kmcsqn / (kmcsqn + cajsr) ** 2)
        d["Ca_jsr"] = Bcajsr * (Jtr - Jrel)
        currents = dict(
            INa=INa,
            INaL=INaL,
            Ito=Ito,
            ICaL=ICaL,
            ICaNa=ICaNa,
            ICaK=ICaK,
            IKr=IKr,
            IKs=IKs,
            IK1=IK1,
            INaCa=INaCa_i + INaCa_ss,
            INaK=INaK,
            INab=INab,
            ICab=ICab,
            IKb=IKb,
            IpCa=IpCa,
            Iion=Iion,
            Istim=Istim + 0.0 * V,
        )
        return gates, d, currents
