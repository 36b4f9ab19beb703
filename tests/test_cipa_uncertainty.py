"""The uncertainty version of the CiPA qNet classification (issue #19, item 3).

Samples of the drug parameters (the FDA's bootstrap hERG fits; bootstrap refits of the
Hill IC50 / h on the published block data) -> the qNet protocol over all samples x
concentrations in one batch -> a probability per risk class. The pacing runs here are
tiny (1 beat, 3 samples, one compiled batch shape): they check the machinery, not the
published probabilities (calibration/cipa_uncertainty.py).
"""

import json
import pathlib

import numpy as np
import pandas as pd
import pytest

from twinjax.models.ep import _cipa_protocol as cp
from twinjax.models.ep import _uncertainty as U
from twinjax.models.ep._cipa import compounds
from twinjax.trial import SafetyTrial, SpecError

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "cardiac_safety_cipa_uncertainty.toml"
N = 3  # samples per compound: 1 + 4 x 3 = 13 cells, the batch of 3 compounds x 4 doses
POINT_COMPOUNDS = ["dofetilide", "verapamil", "metoprolol"]


def test_hill_bootstrap_of_noise_free_data_recovers_ic50_and_h():
    # synthetic block exactly on the Hill curve, three replicates per concentration
    truth = [(350.0, 0.8), (12000.0, 1.6), (2.5e5, 3.0)]
    conc = np.repeat([10.0, 100.0, 1e3, 1e4, 1e5], 3)
    rows = []
    for k, (ic50, h) in enumerate(truth):
        block = 100.0 * (1.0 - 1.0 / (1.0 + (conc / ic50) ** h))
        rows += [
            dict(compound=f"c{k}", channel="ICaL", conc_nM=c, block_pct=b)
            for c, b in zip(conc, block)
        ]
    fits = U.hill_bootstrap(pd.DataFrame(rows), 20, seed=1)
    for k, (ic50, h) in enumerate(truth):
        got_ic50, got_h = fits[(f"c{k}", "ICaL")]
        assert got_ic50.shape == (20,)
        np.testing.assert_allclose(got_ic50, ic50, rtol=1e-6)
        np.testing.assert_allclose(got_h, h, rtol=1e-6)


def test_bootstrap_counts_resample_within_each_concentration():
    groups = np.array([1, 1, 1, 5, 5, 9])
    cnt = U.bootstrap_counts(groups, 200, np.random.default_rng(0))
    assert cnt.shape == (200, 6)
    np.testing.assert_array_equal(cnt[:, :3].sum(1), 3)
    np.testing.assert_array_equal(cnt[:, 3:5].sum(1), 2)
    np.testing.assert_array_equal(cnt[:, 5], 1)
    assert cnt[:, 0].std() > 0  # really resampled


def test_refit_of_the_published_training_data_reproduces_the_fda_fits():
    # FDA/CiPA@e881df6 IC50_optimal.csv (4 significant digits) from the same data and
    # model: the least-squares refit agrees to the rounding
    tab = compounds()
    data = U.block_data()
    data = data[data["compound"].isin(["quinidine", "verapamil"])]
    fits = U.hill_bootstrap(data, 0)
    assert len(fits) == 10  # quinidine 6 currents, verapamil ICaL, IK1, INaL, Ito
    for (c, ch), (ic50, h) in fits.items():
        assert abs(ic50[0] / tab.loc[c, f"{ch}_IC50"] - 1) < 1e-3, (c, ch, ic50)
        assert abs(h[0] - tab.loc[c, f"{ch}_h"]) < 1e-3, (c, ch, h)


def test_draw_samples_is_deterministic_with_a_seed_and_uses_published_rows():
    a = U.draw_samples(["dofetilide", "clarithromycin"], N, seed=7)
    b = U.draw_samples(["dofetilide", "clarithromycin"], N, seed=7)
    c = U.draw_samples(["dofetilide", "clarithromycin"], N, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["Ku"], c["Ku"])
    boot = U.herg_bootstrap()
    for _, r in a.iterrows():  # every hERG sample is a row of the FDA's bootstrap file
        row = boot[(boot["compound"] == r["compound"]) & (boot["boot"] == r["herg_boot"])]
        np.testing.assert_array_equal(row[list(U.HERG)].to_numpy()[0], r[list(U.HERG)])
    # currents without a Hill fit in the table stay unblocked; the others are refitted
    d = a[a["compound"] == "dofetilide"]
    assert d["IKs_IC50"].isna().all() and np.isfinite(d["ICaL_IC50"]).all()
    assert len(set(d["ICaL_IC50"])) > 1


def test_bad_inputs_are_refused_before_running():
    with pytest.raises(ValueError, match="unknown"):
        U.draw_samples(["aspirin"], 2)
    with pytest.raises(ValueError, match="n \\(samples\\) must be an integer >= 1"):
        U.draw_samples(["dofetilide"], 0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        U.draw_samples(["dofetilide"], 2, seed=-1)
    s = U.point_samples(["dofetilide"], 1)
    s.loc[0, "ICaL_IC50"] = -3.0
    with pytest.raises(ValueError, match="row 0 \\(dofetilide\\): ICaL_IC50 = -3.0"):
        U.qnet_uncertainty(samples=s, beats=1, window=1)
    with pytest.raises(ValueError, match="missing columns \\['Kmax'\\]"):
        U.qnet_uncertainty(samples=s.drop(columns="Kmax"), beats=1, window=1)
    with pytest.raises(ValueError, match="window must be an integer"):
        U.qnet_uncertainty(["dofetilide"], n=2, beats=1, window=2)


@pytest.fixture(scope="module")
def runs():
    """Three 13-cell batches (one compiled program), 1 beat each."""
    kw = dict(beats=1, window=1, chunk=1)
    point = cp.qnet_protocol(POINT_COMPOUNDS, **kw)
    zero = U.qnet_uncertainty(samples=U.point_samples(["metoprolol"], N), **kw)
    boot1 = U.qnet_uncertainty(["clarithromycin"], n=N, seed=3, **kw)
    boot2 = U.qnet_uncertainty(["clarithromycin"], n=N, seed=3, **kw)
    return point, zero, boot1, boot2


def test_zero_spread_samples_give_the_point_classification(runs):
    point, zero, _, _ = runs
    pr = zero.probabilities.iloc[0]
    ref = point.scores.set_index("compound").loc["metoprolol"]
    assert pr["n_samples"] == N
    assert pr[f"P_{ref['predicted']}"] == 1.0 and pr["most_likely"] == ref["predicted"]
    for q in U.PERCENTILES:
        assert abs(pr[f"TMS_p{q:g}"] - ref["TMS"]) < 1e-12
    pq = point.doses[point.doses["compound"] == "metoprolol"]["qNet"].to_numpy()
    for s in range(N):
        zq = zero.doses[zero.doses["sample"] == s]["qNet"].to_numpy()
        np.testing.assert_allclose(zq, pq, rtol=0, atol=1e-12)
    assert abs(zero.control["qNet"] - point.control["qNet"]) < 1e-12


def test_probabilities_sum_to_one_and_runs_are_deterministic(runs):
    _, _, a, b = runs
    p = a.probabilities.iloc[0]
    total = p["P_high"] + p["P_intermediate"] + p["P_low"] + p["P_na"]
    assert abs(total - 1.0) < 1e-12
    assert p["TMS_p2.5"] <= p["TMS_p50"] <= p["TMS_p97.5"]
    tms = a.samples["TMS"].to_numpy()
    assert np.isfinite(tms).all() and len(set(tms)) == N  # the samples differ
    pd.testing.assert_frame_equal(a.probabilities, b.probabilities)
    pd.testing.assert_frame_equal(a.samples, b.samples)
    # the probability of a class is the fraction of samples classified so
    for cls in cp.ORDER:
        assert p[f"P_{cls}"] == np.mean([cp.classify(t) == cls for t in tms])


def test_safety_spec_uncertainty_key_is_checked():
    st = SafetyTrial.from_dict(
        {
            "safety": {
                "protocol": "cipa",
                "compounds": ["dofetilide"],
                "uncertainty": {"samples": 10, "seed": 2},
            }
        }
    )
    assert st.uncertainty == {"samples": 10, "seed": 2}
    ex = SafetyTrial.from_toml(EXAMPLE)  # the shipped example parses
    assert ex.protocol == "cipa" and ex.uncertainty == {"samples": 20, "seed": 0}
    bad = [
        ({"samples": 0}, "samples must be an integer >= 1"),
        ({"samples": 5, "seeds": 1}, "unknown key 'seeds'"),
        ({"seed": 1}, "uncertainty.samples: missing"),
        (3, "uncertainty must be a table"),
    ]
    for u, msg in bad:
        with pytest.raises(SpecError, match=msg):
            SafetyTrial.from_dict({"safety": {"protocol": "cipa", "uncertainty": u}})
    with pytest.raises(SpecError, match="uncertainty is read only by protocol = 'cipa'"):
        SafetyTrial.from_dict({"safety": {"uncertainty": {"samples": 2}}})


def test_safety_trial_writes_the_uncertainty_outputs(runs, tmp_path):
    # 3 compounds x 4 doses + control and 3 x 1 sample x 4 + control: the 13-cell,
    # 1-beat program the fixture compiled
    st = SafetyTrial.from_dict(
        {"safety": {"protocol": "cipa", "compounds": POINT_COMPOUNDS, "cipa_beats": 1,
                    "cipa_window": 1, "uncertainty": {"samples": 1, "seed": 4}}}
    )  # fmt: skip
    res = st.run(tmp_path / "out")
    out = tmp_path / "out"
    for f in ("uncertainty.csv", "uncertainty_samples.csv", "uncertainty.png", "risk.csv"):
        assert (out / f).exists(), f
    u = pd.read_csv(out / "uncertainty.csv")
    assert list(u["compound"]) == POINT_COMPOUNDS
    np.testing.assert_allclose(u[["P_high", "P_intermediate", "P_low", "P_na"]].sum(axis=1), 1.0)
    rec = json.loads((out / "safety.json").read_text())
    assert rec["uncertainty"]["samples"] == 1 and rec["spec"]["uncertainty"]["seed"] == 4
    assert "uncertainty.png" in rec["outputs"]
    assert res["uncertainty"].shape[0] == 3
