"""Minimal whole-body PBPK: gut, liver, kidney, rest of body, arterial and venous blood.

Perfusion-limited tissues (tissue:plasma partition coefficients ``Kp``), a
well-stirred liver (hepatic clearance from unbound intrinsic clearance, fraction
unbound and hepatic blood flow), renal clearance ``fu GFR`` (times a net
secretion/reabsorption factor), oral absorption from the gut lumen (``KA``,
fraction absorbed ``FA``) into the gut wall, whose venous blood drains through the
portal vein into the liver (first pass). The lungs are lumped with arterial blood.

Amounts in mg, volumes in L, flows and clearances in L/h, time in h. Concentrations
in blood are ``A / V``; the blood leaving a tissue has ``C_T BP / Kp_T`` (``BP``: the
blood:plasma ratio); unbound blood fraction ``fu_b = fu / BP``.

```
dA_lumen  = -KA A_lumen                                          (oral doses here)
dA_gut    = FA KA A_lumen + Q_gut (C_art - C_gut,out)
dA_liver  = Q_ha C_art + Q_gut C_gut,out - Q_h C_liver,out - fu_b CLint C_liver,out
dA_kidney = Q_k (C_art - C_kidney,out)
dA_rest   = Q_rest (C_art - C_rest,out)
dA_ven    = Q_h C_liver,out + Q_k C_kidney,out + Q_rest C_rest,out - CO C_ven   (IV doses)
dA_art    = CO (C_ven - C_art) - CL_R C_art / BP,   CL_R = fu GFR R_ren
```

At steady state the liver's extraction ratio is the well-stirred one,
``E_h = fu_b CLint / (Q_h + fu_b CLint)``, and its blood clearance
``CL_h = Q_h fu_b CLint / (Q_h + fu_b CLint)`` (:func:`well_stirred`; with ``BP = 1``
this is ``Q_h fu CLint / (Q_h + fu CLint)``).

**Physiology from body weight and cardiac output.** Organ volumes are fractions of
body weight (density 1 kg/L) and blood flows fractions of cardiac output (Brown et
al. 1997, Tables 7 and 23; reference man: ICRP 89): liver 2.57 % of BW, kidneys
0.44 %, gastrointestinal tract 1.71 %, blood 7.9 % (one third arterial); liver
blood flow 22.7 % of CO, of which 80 % portal (gut) and 20 % hepatic artery,
kidneys 17.5 %. The rest of the body takes the remaining volume and flow.

**Hepatic impairment** (:func:`child_pugh`): multipliers of the portal and hepatic
arterial blood flows, cardiac output, functional liver volume (which scales
``CLint``) and plasma albumin (which raises ``fu`` through binding to one class of
albumin sites, ``fu' = fu / (fu + (1 - fu) f_alb)``), after the meta-analysis of
physiological changes by Child-Pugh class in Li, Barton & Maurer (2015), which
compiles Edginton & Willmann (2008) and Johnson et al. (2010).
**Renal function** is the covariate ``GFR`` (a creatinine clearance may be used in
its place, :func:`renal_function`).

References:
    - Brown RP, Delp MD, Lindstedt SL, Rhomberg LR, Beliles RP. Physiological
      parameter values for physiologically based pharmacokinetic models. Toxicol Ind
      Health 13:407-484, 1997.
    - ICRP Publication 89. Basic anatomical and physiological data for use in
      radiological protection: reference values. Ann ICRP 32(3-4), 2002.
    - Rowland M, Benet LZ, Graham GG. Clearance concepts in pharmacokinetics.
      J Pharmacokinet Biopharm 1:123-136, 1973 (well-stirred liver).
    - Edginton AN, Willmann S. Physiology-based simulations of a pathological
      condition: prediction of pharmacokinetics in patients with liver cirrhosis.
      Clin Pharmacokinet 47:743-752, 2008.
    - Johnson TN, Boussery K, Rowland-Yeo K, Tucker GT, Rostami-Hodjegan A. A
      semi-mechanistic model to predict the effects of liver cirrhosis on drug
      clearance. Clin Pharmacokinet 49:189-206, 2010.
    - Li R, Barton HA, Maurer TS. A mechanistic pharmacokinetic model for liver
      transporter substrates under liver cirrhosis conditions. CPT Pharmacometrics
      Syst Pharmacol 4:338-349, 2015 (Table 1: changes by Child-Pugh class).
"""

from __future__ import annotations

from ..ode import Model, Param, State
from ..ode._param import fraction, positive

BROWN = "Brown et al. 1997"
ILL = "illustrative drug property"

# fractions of body weight (L/kg) and of cardiac output (Brown et al. 1997)
VOLUME_FRACTION = dict(liver=0.0257, kidney=0.0044, gut=0.0171, blood=0.079)
FLOW_FRACTION = dict(liver=0.227, kidney=0.175)
PORTAL_FRACTION = 0.8  # of liver blood flow

# Child-Pugh multipliers (Li, Barton & Maurer 2015, Table 1, means)
CHILD_PUGH = {
    "none": dict(f_Qpv=1.0, f_Qha=1.0, f_CO=1.0, f_liver=1.0, f_alb=1.0),
    "A": dict(f_Qpv=0.72, f_Qha=1.5, f_CO=1.1, f_liver=0.91, f_alb=0.84),
    "B": dict(f_Qpv=0.60, f_Qha=1.7, f_CO=1.2, f_liver=0.81, f_alb=0.69),
    "C": dict(f_Qpv=0.13, f_Qha=2.1, f_CO=1.3, f_liver=0.64, f_alb=0.53),
}


def child_pugh(grade: str) -> dict[str, float]:
    """Hepatic-impairment multipliers for a Child-Pugh class.

    Arguments:
        grade: ``"none"``, ``"A"`` (mild), ``"B"`` (moderate) or ``"C"`` (severe).

    Returns:
        ``{param: value}`` for ``f_Qpv, f_Qha, f_CO, f_liver, f_alb`` (Li, Barton &
        Maurer 2015, Table 1; from Edginton & Willmann 2008 and Johnson et al. 2010).
    """
    if grade not in CHILD_PUGH:
        raise ValueError(f"Child-Pugh grade must be one of {list(CHILD_PUGH)}, got {grade!r}")
    return dict(CHILD_PUGH[grade])


def renal_function(crcl_ml_min) -> dict:
    """``{"GFR": L/h}`` from a GFR or creatinine clearance in mL/min."""
    return {"GFR": crcl_ml_min * 0.06}


def well_stirred(Q_h, fu, CLint, BP=1.0):
    """Well-stirred liver: ``(CL_h, E_h)``, blood clearance and extraction ratio.

    ``fu_b = fu / BP``, ``CL_h = Q_h fu_b CLint / (Q_h + fu_b CLint)``, ``E_h = CL_h / Q_h``
    (Rowland, Benet & Graham 1973).
    """
    fub = fu / BP
    cl = Q_h * fub * CLint / (Q_h + fub * CLint)
    return cl, cl / Q_h


TISSUES = ("gut", "liver", "kidney", "rest")


class MinimalPBPK(Model):
    """Minimal PBPK model with a well-stirred liver, kidney, gut and rest of body.

    States (mg): ``lumen`` (oral doses), ``gut``, ``liver``, ``kidney``, ``rest``,
    ``art``, ``ven`` (IV doses); cumulative: ``eliminated_hepatic``,
    ``eliminated_renal``, ``unabsorbed``.

    Outputs (mg/L): ``C`` (venous plasma), ``C_blood`` (venous blood), ``C_liver``,
    ``C_kidney``, ``C_gut``, ``C_rest`` (tissue), ``E_h`` (instantaneous extraction
    of the liver, ``fu_b CLint / (Q_h + fu_b CLint)``), ``Q_h`` (L/h).
    """

    time_unit = "h"
    reference = "Brown et al. 1997; Rowland et al. 1973; Edginton & Willmann 2008"

    @property
    def states(self) -> tuple[State, ...]:  # type: ignore[override]
        return (
            State("lumen", "mg", "gut lumen (oral doses)"),
            State("gut", "mg", "gut wall"),
            State("liver", "mg", "liver"),
            State("kidney", "mg", "kidneys"),
            State("rest", "mg", "rest of the body"),
            State("art", "mg", "arterial blood (with lungs)"),
            State("ven", "mg", "venous blood (IV doses)"),
            State("eliminated_hepatic", "mg", "metabolised in the liver", cumulative=True),
            State("eliminated_renal", "mg", "excreted in urine", cumulative=True),
            State("unabsorbed", "mg", "not absorbed (faeces)", cumulative=True),
        )

    @property
    def params(self) -> tuple[Param, ...]:  # type: ignore[override]
        return (
            positive(
                "BW",
                70.0,
                "kg",
                lower=0.5,
                upper=400.0,
                source="ICRP 89 reference man",
                doc="body weight",
            ),  # fmt: skip
            positive(
                "CO",
                390.0,
                "L/h",
                upper=3000.0,
                source="ICRP 89 reference man (6.5 L/min)",
                doc="cardiac output",
            ),  # fmt: skip
            positive(
                "GFR",
                7.2,
                "L/h",
                upper=50.0,
                source="120 mL/min, normal adult",
                doc="glomerular filtration rate (renal-function covariate)",
            ),  # fmt: skip
            positive(
                "CLint",
                50.0,
                "L/h",
                upper=1e6,
                source=ILL,
                doc="unbound hepatic intrinsic clearance (healthy liver)",
            ),  # fmt: skip
            fraction("fu", 0.5, lower=1e-4, source=ILL, doc="fraction unbound in plasma"),
            positive(
                "BP",
                1.0,
                "1",
                lower=0.05,
                upper=20.0,
                source=ILL,
                doc="blood:plasma concentration ratio",
            ),  # fmt: skip
            positive("Kp_gut", 1.0, "1", upper=1e4, source=ILL, doc="gut:plasma partition"),
            positive("Kp_liver", 1.0, "1", upper=1e4, source=ILL, doc="liver:plasma partition"),
            positive(
                "Kp_kidney", 1.0, "1", upper=1e4, source=ILL, doc="kidney:plasma partition"
            ),  # fmt: skip
            positive(
                "Kp_rest", 1.0, "1", upper=1e4, source=ILL, doc="rest-of-body:plasma partition"
            ),  # fmt: skip
            positive(
                "R_ren",
                1.0,
                "1",
                upper=100.0,
                source=ILL,
                doc="renal clearance / (fu GFR): net secretion (>1) or reabsorption (<1)",
            ),  # fmt: skip
            positive("KA", 1.0, "1/h", upper=100.0, source=ILL, doc="absorption rate constant"),
            fraction("FA", 0.9, source=ILL, doc="fraction of the oral dose absorbed"),
            positive(
                "f_Qpv",
                1.0,
                "1",
                upper=5.0,
                source="Li et al. 2015 (Child-Pugh)",
                doc="multiplier of portal (gut) blood flow",
            ),  # fmt: skip
            positive(
                "f_Qha",
                1.0,
                "1",
                upper=5.0,
                source="Li et al. 2015 (Child-Pugh)",
                doc="multiplier of hepatic arterial blood flow",
            ),  # fmt: skip
            positive(
                "f_CO",
                1.0,
                "1",
                upper=5.0,
                source="Li et al. 2015 (Child-Pugh)",
                doc="multiplier of cardiac output",
            ),  # fmt: skip
            positive(
                "f_liver",
                1.0,
                "1",
                upper=5.0,
                source="Li et al. 2015 (Child-Pugh)",
                doc="multiplier of functional liver volume (and of CLint)",
            ),  # fmt: skip
            positive(
                "f_alb",
                1.0,
                "1",
                upper=5.0,
                source="Li et al. 2015 (Child-Pugh)",
                doc="multiplier of plasma albumin (raises fu)",
            ),  # fmt: skip
        )

    # -- physiology -----------------------------------------------------------------
    def physiology(self, p) -> dict:
        """Volumes (L), flows (L/h) and effective drug parameters from ``p``."""
        BW, CO = p["BW"], p["CO"] * p["f_CO"]
        vb = VOLUME_FRACTION["blood"] * BW
        V = dict(
            liver=VOLUME_FRACTION["liver"] * BW * p["f_liver"],
            kidney=VOLUME_FRACTION["kidney"] * BW,
            gut=VOLUME_FRACTION["gut"] * BW,
            art=vb / 3.0,
            ven=2.0 * vb / 3.0,
        )
        V["rest"] = BW - (
            VOLUME_FRACTION["liver"] * BW + V["kidney"] + V["gut"] + vb
        )  # density 1 kg/L
        Ql = FLOW_FRACTION["liver"] * p["CO"]
        Q = dict(
            gut=PORTAL_FRACTION * Ql * p["f_Qpv"],
            ha=(1.0 - PORTAL_FRACTION) * Ql * p["f_Qha"],
            kidney=FLOW_FRACTION["kidney"] * p["CO"],
        )
        Q["liver"] = Q["gut"] + Q["ha"]
        Q["rest"] = CO - Q["liver"] - Q["kidney"]
        Q["CO"] = CO
        fu = p["fu"] / (p["fu"] + (1.0 - p["fu"]) * p["f_alb"])
        return dict(
            V=V,
            Q=Q,
            fu=fu,
            fub=fu / p["BP"],
            CLint=p["CLint"] * p["f_liver"],
            CLr=fu * p["GFR"] * p["R_ren"],
        )

    def _conc(self, y, p, ph):
        V = ph["V"]
        out = {k: y[k] / V[k] for k in ("art", "ven")}
        for k in TISSUES:
            out[k] = y[k] / V[k]
            out[k + "_out"] = out[k] * p["BP"] / p[f"Kp_{k}"]
        return out

    def rhs(self, t, y, p, u):
        ph = self.physiology(p)
        Q, c = ph["Q"], self._conc(y, p, ph)
        absorbed = p["KA"] * y["lumen"]
        hep = ph["fub"] * ph["CLint"] * c["liver_out"]
        ren = ph["CLr"] * c["art"] / p["BP"]
        return {
            "lumen": -absorbed,
            "gut": p["FA"] * absorbed + Q["gut"] * (c["art"] - c["gut_out"]),
            "liver": Q["ha"] * c["art"]
            + Q["gut"] * c["gut_out"]
            - Q["liver"] * c["liver_out"]
            - hep,
            "kidney": Q["kidney"] * (c["art"] - c["kidney_out"]),
            "rest": Q["rest"] * (c["art"] - c["rest_out"]),
            "ven": Q["liver"] * c["liver_out"]
            + Q["kidney"] * c["kidney_out"]
            + Q["rest"] * c["rest_out"]
            - Q["CO"] * c["ven"],
            "art": Q["CO"] * (c["ven"] - c["art"]) - ren,
            "eliminated_hepatic": hep,
            "eliminated_renal": ren,
            "unabsorbed": (1.0 - p["FA"]) * absorbed,
        }

    def init(self, p):
        z = 0.0 * p["BW"]
        return {s: z for s in self.state_names}

    def observe(self, t, y, p):
        ph = self.physiology(p)
        c = self._conc(y, p, ph)
        fc = ph["fub"] * ph["CLint"]
        return {
            "C": c["ven"] / p["BP"],
            "C_blood": c["ven"],
            "C_liver": c["liver"],
            "C_kidney": c["kidney"],
            "C_gut": c["gut"],
            "C_rest": c["rest"],
            "E_h": fc / (ph["Q"]["liver"] + fc) + 0.0 * c["ven"],
            "Q_h": ph["Q"]["liver"] + 0.0 * c["ven"],
        }
