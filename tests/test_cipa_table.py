"""The shipped CiPA compound table (``models/ep/compounds.csv``) against the FDA's published
CiPA data (tests/data/cipa_li2017_training.csv, extracted from github.com/FDA/CiPA with its
commit and paths named in the file's header): every IC50 within 2 %, every Hill coefficient
within 0.06 (the shipped table rounds h to one decimal), the same currents blocked, the
same free Cmax and CiPA class. A 10x typo in an IC50 fails here."""

import pathlib

import numpy as np
import pandas as pd
import pytest

from twinjax.models.ep import _drugs

REF = pd.read_csv(
    pathlib.Path(__file__).parent / "data" / "cipa_li2017_training.csv", comment="#"
).set_index("drug")
OURS = pd.read_csv(_drugs._FILE, comment="#").set_index("compound")
# shipped column -> reference column
CURRENTS = {
    "IKr": "hERG",
    "INaL": "INaL",
    "ICaL": "ICaL",
    "INa": "INa",
    "Ito": "Ito",
    "IK1": "IK1",
    "IKs": "IKs",
}


def test_same_compounds():
    assert sorted(OURS.index) == sorted(REF.index)


@pytest.mark.parametrize("drug", sorted(REF.index))
def test_ic50_hill_cmax_and_class_match_the_fda_data(drug):
    ours, ref = OURS.loc[drug], REF.loc[drug]
    for cur, rc in CURRENTS.items():
        ic, h = ours[f"{cur}_IC50"], ours[f"{cur}_h"]
        ric, rh = ref[f"{rc}_IC50"], ref[f"{rc}_h"]
        assert np.isnan(ic) == np.isnan(ric), (drug, cur, ic, ric)
        if np.isnan(ric):
            continue
        assert abs(ic / ric - 1) < 0.02, (drug, cur, ic, ric)
        assert abs(h - rh) < 0.06, (drug, cur, h, rh)
    assert ours["Cmax_nM"] == pytest.approx(ref["therapeutic"], rel=1e-9)
    assert int(ours["risk"]) == int(ref["CiPA"])


def test_loaded_table_is_the_file():
    """What the library uses is what the file says (no transformation hides a typo)."""
    table = _drugs.compounds()
    assert table.loc["dofetilide", "INaL_IC50"] == pytest.approx(753160.41, rel=0.02)
    h = table.loc["dofetilide", "INaL_h"]
    f = _drugs.block_factors("dofetilide", 2.0)
    assert float(f["INaL"]) == pytest.approx(1 / (1 + (2.0 / 753160.41) ** h), rel=1e-3)


# ------------------------------------------------------------------------------------------
# CiPAORdv1.0 inputs (twinjax/models/ep/cipa_compounds.csv): the 16 validation compounds of
# Li et al. 2019 (CPT 105:466) against tests/data/cipa_validation16_li2019.csv, the reference
# copy extracted by calibration/cipa_validation_sources.py with `git show` from
# CardiacModelling/hERG-binding-mechanisms@4fdb8a3 methods/parameters.py (Li 2019 supplement
# S2 pp. 13-14) and FDA/CiPA@a0924b5 (Model-Validation-2018) AP_simulation/data/newCiPA.csv.
# The table rows were compiled separately, by hand from the same sources; the two agree to
# the last digit.
from twinjax.models.ep import _cipa  # noqa: E402

VAL = pd.read_csv(
    pathlib.Path(__file__).parent / "data" / "cipa_validation16_li2019.csv", comment="#"
).set_index("compound")
CIPA = _cipa.compounds()
DYNAMIC = ("Kmax", "Ku", "n", "halfmax", "Vhalf")
HILL = ("INaL", "ICaL", "INa")  # the only non-hERG fits for the validation drugs


def test_cipa_table_has_28_compounds_12_training_16_validation():
    assert len(CIPA) == 28 and CIPA.index.is_unique
    assert sorted(CIPA.index[CIPA["set"] == "training"]) == sorted(REF.index)
    assert sorted(CIPA.index[CIPA["set"] == "validation"]) == sorted(VAL.index)
    # CiPA categories: training 4/4/4, validation 4 high / 7 intermediate / 5 low
    counts = CIPA.groupby(["set", "cipa_class"]).size().to_dict()
    assert counts == {
        ("training", 0): 4,
        ("training", 1): 4,
        ("training", 2): 4,
        ("validation", 0): 5,
        ("validation", 1): 7,
        ("validation", 2): 4,
    }


@pytest.mark.parametrize("drug", sorted(VAL.index))
def test_validation_compound_matches_li2019(drug):
    ours, ref = CIPA.loc[drug], VAL.loc[drug]
    assert ours["set"] == "validation"
    assert ours["cmax_free_nM"] == pytest.approx(ref["cmax_free_nM"], rel=1e-12)
    assert int(ours["cipa_class"]) == int(ref["cipa_class"])
    assert ref["Kt"] == pytest.approx(3.5e-5)  # the model's fixed trapping rate
    for k in DYNAMIC:
        assert ours[k] == pytest.approx(ref[k], rel=1e-12), (drug, k)
    for ch in HILL:
        assert ours[f"{ch}_IC50"] == pytest.approx(ref[f"{ch}_IC50"], rel=1e-12), (drug, ch)
        assert ours[f"{ch}_h"] == pytest.approx(ref[f"{ch}_h"], rel=1e-12), (drug, ch)
    for ch in ("Ito", "IKs", "IK1"):  # no fit: no block
        assert np.isnan(ours[f"{ch}_IC50"]) and np.isnan(ours[f"{ch}_h"]), (drug, ch)
    assert ours["hERG_IC50"] == pytest.approx(ref["hERG_IC50"], rel=1e-12)
    assert "Li2019" in ours["source"] and "newCiPA.csv" in ours["source"]


def test_validation_compound_params_block_only_the_fitted_currents():
    model = _cipa.CiPAORd()
    p = _cipa.compound_params(model, "disopyramide", 742.0)
    assert set(p) == {"D", "Kt", *DYNAMIC, "GNaL", "PCa", "GNa"}
    assert float(p["halfmax"]) == 894.6  # Li 2019 S2 p.13 as transcribed (2 * 447.3)
    g = model.param("PCa").value
    assert float(p["PCa"]) == pytest.approx(g / (1 + (742.0 / 32900.0) ** 0.69), rel=1e-12)
