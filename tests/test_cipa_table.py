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
