"""Population layer: demographics, covariate models, IIV with a full Omega, VPop selection."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import twinjax
from twinjax.models.pk import one_compartment
from twinjax.population import (
    COLUMNS,
    Categorical,
    Cohort,
    Demographics,
    Exponential,
    Linear,
    Population,
    Power,
    SexGroup,
    body_surface_area,
    cockcroft_gault,
    plausible,
    select_vpop,
)

MODEL = one_compartment(absorption="first_order")  # CL, V, KA, F, TLAG

# (log) omega for the Omega-recovery tests: CL-V correlation 0.6, KA independent.
OMEGA = np.array(
    [
        [0.09, 0.6 * 0.3 * 0.2, 0.0],
        [0.6 * 0.3 * 0.2, 0.04, 0.0],
        [0.0, 0.0, 0.25],
    ]
)

# Wide truncation, so that sample moments estimate the untruncated parameters.
WIDE = Demographics(
    age_range=(-100.0, 200.0),
    weight_range=(1.0, 2000.0),
    height_range=(50.0, 300.0),
    scr_range=(0.01, 50.0),
)


@pytest.fixture(scope="module")
def big_demo():
    return WIDE.sample(jax.random.key(0), 200_000)


@pytest.fixture(scope="module")
def big_cohort():
    pop = Population(
        MODEL,
        typical={"F": 0.6},
        covariates=[Power("CL", "WT", 0.75, ref=70.0), Power("V", "WT", 1.0, ref=70.0)],
        omega=OMEGA,
        iiv=["CL", "V", "KA"],
        demographics=Demographics(),
    )
    return pop, pop.sample(jax.random.key(1), 200_000)


# ------------------------------------------------------------------ demographics
def test_demographics_columns_and_derived(big_demo):
    df = big_demo
    assert tuple(df.columns) == COLUMNS
    assert df.index.name == "ID" and len(df) == 200_000
    assert set(np.unique(df["SEX"])) == {0, 1}
    np.testing.assert_allclose(df["BMI"], df["WT"] / (df["HT"] / 100) ** 2, rtol=1e-12)
    # Du Bois & Du Bois (1916): 70 kg, 170 cm -> 1.8097 m2 (hand-computed).
    assert body_surface_area(70.0, 170.0) == pytest.approx(0.007184 * 70**0.425 * 170**0.725)
    assert body_surface_area(70.0, 170.0) == pytest.approx(1.8097, abs=1e-4)
    # Cockcroft & Gault (1976): 40 y, 72 kg, SCr 1 mg/dL -> 100 mL/min (male), 85 (female).
    assert cockcroft_gault(40.0, 72.0, 1.0, 0) == pytest.approx(100.0)
    assert cockcroft_gault(40.0, 72.0, 1.0, 1) == pytest.approx(85.0)
    np.testing.assert_allclose(
        df["CRCL"],
        cockcroft_gault(df["AGE"].values, df["WT"].values, df["SCR"].values, df["SEX"].values),
        rtol=1e-12,
    )


def test_demographics_moments_recovered(big_demo):
    df = big_demo
    n = len(df)
    # female fraction within 4 binomial SEs
    p = WIDE.female_fraction
    assert abs(df["SEX"].mean() - p) < 4 * math.sqrt(p * (1 - p) / n)
    for sex, g in ((0, WIDE.male), (1, WIDE.female)):
        x = df[df["SEX"] == sex]
        m = len(x)
        data = np.stack([x["AGE"], np.log(x["WT"]), x["HT"]])
        mean = data.mean(axis=1)
        sd = data.std(axis=1)
        want_sd = np.sqrt(np.diag(g.covariance))
        np.testing.assert_array_less(np.abs(mean - g.mean), 4 * want_sd / math.sqrt(m))
        np.testing.assert_array_less(np.abs(sd / want_sd - 1), 4 / math.sqrt(2 * m))
        # correlations: SE of a Pearson r is about (1 - r^2) / sqrt(m)
        r = np.corrcoef(data)
        tol = 4 * (1 - g.correlation**2) / math.sqrt(m) + 1e-12
        np.testing.assert_array_less(np.abs(r - g.correlation), tol)
        # arithmetic weight mean and SD (log-normal moment matching)
        assert abs(x["WT"].mean() - g.weight_mean) < 4 * g.weight_sd / math.sqrt(m)
        # serum creatinine: log-linear in age
        ls = np.log(x["SCR"].values)
        slope, icpt = np.polyfit(x["AGE"].values - g.scr_age_ref, ls, 1)
        assert icpt == pytest.approx(math.log(g.scr_median), abs=4 * g.scr_log_sd / math.sqrt(m))
        assert slope == pytest.approx(g.scr_age_slope, abs=1e-3)


def test_demographics_default_is_realistic_and_truncated():
    d = Demographics()
    df = d.sample(jax.random.key(3), 20_000)
    assert df["AGE"].between(*d.age_range).all()
    assert df["WT"].between(*d.weight_range).all()
    assert df["HT"].between(*d.height_range).all()
    assert df["SCR"].between(*d.scr_range).all()
    by = df.groupby("SEX").mean()
    # NHANES 2015-2018 adults: men 90.6 kg / 175.3 cm, women 77.5 kg / 161.3 cm; BMI ~29-30.
    assert by.loc[0, "WT"] == pytest.approx(90.6, rel=0.03)
    assert by.loc[1, "WT"] == pytest.approx(77.5, rel=0.03)
    assert by.loc[0, "HT"] == pytest.approx(175.3, abs=1.0)
    assert by.loc[1, "HT"] == pytest.approx(161.3, abs=1.0)
    assert 27.5 < by.loc[0, "BMI"] < 31 and 27.5 < by.loc[1, "BMI"] < 31.5
    assert 1.9 < by.loc[0, "BSA"] < 2.2 and 1.65 < by.loc[1, "BSA"] < 1.95
    assert 80 < df["CRCL"].median() < 150


def test_demographics_validation():
    with pytest.raises(ValueError, match="female_fraction"):
        Demographics(female_fraction=1.5)
    with pytest.raises(ValueError, match="age_range"):
        Demographics(age_range=(60.0, 30.0))
    with pytest.raises(ValueError, match="positive definite"):
        SexGroup(
            40,
            10,
            70,
            10,
            170,
            7,
            corr_age_weight=0.9,
            corr_age_height=0.9,
            corr_weight_height=-0.9,
        )
    with pytest.raises(ValueError, match="truncation"):
        Demographics(age_range=(100.0, 110.0))


# ------------------------------------------------------------------ IIV and Omega
def test_full_omega_recovered(big_cohort):
    pop, c = big_cohort
    assert c.etas.shape == (200_000, 3) and c.iiv == ("CL", "V", "KA")
    e = np.asarray(c.etas)
    n = e.shape[0]
    cov = np.cov(e, rowvar=False)
    # SE of a sample covariance: sqrt((s_ii s_jj + s_ij^2) / n)
    se = np.sqrt((np.outer(np.diag(OMEGA), np.diag(OMEGA)) + OMEGA**2) / n)
    np.testing.assert_array_less(np.abs(cov - OMEGA), 4 * se)
    np.testing.assert_array_less(np.abs(e.mean(axis=0)), 4 * np.sqrt(np.diag(OMEGA) / n))
    # the eta is exactly the log-deviation from the covariate-adjusted typical value
    np.testing.assert_allclose(np.log(c.params["CL"] / c.typical["CL"]), e[:, 0], atol=1e-10)
    np.testing.assert_allclose(np.log(c.params["KA"] / c.typical["KA"]), e[:, 2], atol=1e-10)
    assert np.allclose(pop.omega_corr[0, 1], 0.6)


def test_lognormal_iiv_positive_with_median_at_typical(big_cohort):
    _, c = big_cohort
    ka = np.asarray(c.params["KA"])  # no covariate: TV = model default 1.0 1/h
    assert np.all(ka > 0)
    n = ka.size
    # the sample median of a log-normal: SE(log median) = sqrt(pi/2) * omega / sqrt(n)
    se = math.sqrt(math.pi / 2) * 0.5 / math.sqrt(n)
    assert abs(math.log(np.median(ka)) - math.log(1.0)) < 4 * se
    # CV of a log-normal: sqrt(exp(omega^2) - 1)
    assert ka.std() / ka.mean() == pytest.approx(math.sqrt(math.expm1(0.25)), rel=0.02)
    # parameters without IIV are the (covariate-adjusted) typical values
    np.testing.assert_array_equal(np.asarray(c.params["F"]), 0.6)
    np.testing.assert_array_equal(np.asarray(c.params["TLAG"]), 0.0)


def test_logit_normal_iiv_stays_in_bounds():
    pop = Population(MODEL, typical={"F": 0.8}, omega={"F": 4.0})  # wide: SD 2 on logit
    c = pop.sample(jax.random.key(2), 50_000)
    f = np.asarray(c.params["F"])
    assert np.all((f > 0) & (f < 1))
    assert f.min() < 0.1 and f.max() > 0.99  # the bounds are approached, never crossed
    assert np.median(f) == pytest.approx(0.8, abs=0.01)
    e = np.asarray(c.etas[:, 0])
    np.testing.assert_allclose(np.log(f / (1 - f)) - math.log(0.8 / 0.2), e, atol=1e-8)


def test_identity_iiv_is_additive_normal():
    pop = Population.from_cv(MODEL, {"TLAG": 0.5}, typical={"TLAG": 2.0})
    assert pop.omega[0, 0] == pytest.approx(1.0)  # SD = CV * TV = 1 h
    c = pop.sample(jax.random.key(5), 40)
    np.testing.assert_allclose(c.params["TLAG"] - 2.0, c.etas[:, 0], atol=1e-12)


def test_from_cv_and_correlation():
    pop = Population.from_cv(MODEL, {"CL": 0.3, "V": 0.2}, corr={("CL", "V"): 0.5})
    w_cl, w_v = math.log1p(0.09), math.log1p(0.04)
    want = np.array([[w_cl, 0.5 * math.sqrt(w_cl * w_v)], [0.5 * math.sqrt(w_cl * w_v), w_v]])
    np.testing.assert_allclose(pop.omega, want)
    same = Population(MODEL, omega={"CL": w_cl, "V": w_v, ("V", "CL"): want[0, 1]})
    np.testing.assert_allclose(same.omega, want)
    assert same.iiv == ("CL", "V")


def test_invalid_omega_raises_clear_errors():
    with pytest.raises(ValueError, match="symmetric"):
        Population(MODEL, omega=[[0.1, 0.05], [0.0, 0.1]], iiv=["CL", "V"])
    with pytest.raises(ValueError, match="positive semi-definite"):
        Population(MODEL, omega=[[0.1, 0.2], [0.2, 0.1]], iiv=["CL", "V"])
    with pytest.raises(ValueError, match=r"shape \(2, 2\).*3 names"):
        Population(MODEL, omega=np.eye(2), iiv=["CL", "V", "KA"])
    with pytest.raises(ValueError, match="negative variances.*V"):
        Population(MODEL, omega={"CL": 0.1, "V": -0.1})
    with pytest.raises(ValueError, match="unknown parameter.*CLX"):
        Population(MODEL, omega={"CLX": 0.1})
    with pytest.raises(ValueError, match="needs iiv"):
        Population(MODEL, omega=np.eye(2))
    with pytest.raises(ValueError, match="non-finite"):
        Population(MODEL, omega=[[np.nan]], iiv=["CL"])
    with pytest.raises(ValueError, match="repeats"):
        Population(MODEL, omega=np.eye(2) * 0.1, iiv=["CL", "CL"])
    # singular (rank-deficient) but PSD Omega is allowed: perfectly correlated etas
    pop = Population(MODEL, omega=[[0.1, 0.1], [0.1, 0.1]], iiv=["CL", "V"])
    e = np.asarray(pop.sample(jax.random.key(0), 100).etas)
    np.testing.assert_allclose(e[:, 0], e[:, 1], atol=1e-12)


# ------------------------------------------------------------------ covariates
def test_allometric_clearance_on_sampled_params(big_cohort):
    pop, c = big_cohort
    wt = c.covariates["WT"].to_numpy()
    np.testing.assert_allclose(c.typical["CL"], 5.0 * (wt / 70.0) ** 0.75, rtol=1e-12)
    np.testing.assert_allclose(c.typical["V"], 50.0 * (wt / 70.0), rtol=1e-12)
    # regress log CL on log(WT/70): slope 0.75, intercept log 5 (the etas are independent)
    slope, icpt = np.polyfit(np.log(wt / 70.0), np.log(np.asarray(c.params["CL"])), 1)
    assert slope == pytest.approx(0.75, abs=0.02)
    assert icpt == pytest.approx(math.log(5.0), abs=0.01)


def test_covariate_forms():
    cov = pd.DataFrame({"AGE": [40.0, 50.0, 30.0], "SEX": [0, 1, 1], "WT": [70.0, 35.0, 140.0]})
    pop = Population(
        MODEL,
        covariates=[
            Linear("CL", "AGE", -0.01, ref=40.0),
            Categorical("CL", "SEX", theta=0.8),
            Exponential("V", "AGE", 0.02, ref=40.0),
            Categorical("KA", "SEX", factors={0: 1.0, 1: 1.5}),
        ],
    )
    c = pop.sample(jax.random.key(0), 3, covariates=cov)
    np.testing.assert_allclose(c.params["CL"], 5.0 * np.array([1.0, 0.9 * 0.8, 1.1 * 0.8]))
    np.testing.assert_allclose(c.params["V"], 50.0 * np.exp(0.02 * np.array([0.0, 10, -10])))
    np.testing.assert_allclose(c.params["KA"], [1.0, 1.5, 1.5])
    assert c.etas.shape == (3, 0)
    # a covariate model that drives a positive parameter negative is a clear error
    bad = Population(MODEL, covariates=[Linear("CL", "AGE", -0.1, ref=40.0)])
    with pytest.raises(ValueError, match="'CL'.*patient 1.*outside its bounds"):
        bad.sample(jax.random.key(0), 3, covariates=pd.DataFrame({"AGE": [40.0, 60.0, 50.0]}))
    with pytest.raises(ValueError, match="need covariates"):
        bad.sample(jax.random.key(0), 3)
    with pytest.raises(KeyError, match="'AGE'"):
        bad.sample(jax.random.key(0), 1, covariates=pd.DataFrame({"WT": [70.0]}))
    with pytest.raises(ValueError, match="exactly one"):
        Categorical("CL", "SEX")


# ------------------------------------------------------------------ chunking and cohort
def test_sampling_is_deterministic_and_chunk_invariant():
    pop = Population.from_cv(
        MODEL,
        {"CL": 0.3, "V": 0.2, "F": 0.1},
        corr={("CL", "V"): 0.4},
        typical={"F": 0.7},
        covariates=[Power("CL", "WT", 0.75)],
        demographics=Demographics(),
    )
    key = jax.random.key(42)
    full = pop.sample(key, 500)
    again = pop.sample(key, 500)
    np.testing.assert_array_equal(full.etas, again.etas)
    parts = [pop.sample(key, b - a, start=a) for a, b in ((0, 137), (137, 300), (300, 500))]
    for name in MODEL.param_names:
        np.testing.assert_array_equal(
            np.concatenate([np.asarray(p.params[name]) for p in parts]),
            np.asarray(full.params[name]),
        )
    np.testing.assert_array_equal(np.concatenate([p.etas for p in parts]), full.etas)
    pd.testing.assert_frame_equal(pd.concat([p.covariates for p in parts]), full.covariates)
    # a chunk of the cohort equals sampling that chunk alone
    mid = pop.sample(key, 50, start=200)
    sub = full.chunk(200, 250)
    np.testing.assert_array_equal(mid.params["CL"], sub.params["CL"])
    np.testing.assert_array_equal(mid.index, sub.index)
    np.testing.assert_array_equal(pop.sample_etas(key, 50, start=200), sub.etas)
    # another key gives another cohort
    assert not np.allclose(pop.sample(jax.random.key(43), 500).etas, full.etas)


def test_cohort_indexing_and_dataframe():
    pop = Population(MODEL, omega={"CL": 0.09, "V": 0.04}, demographics=Demographics())
    c = pop.sample(jax.random.key(7), 20)
    assert isinstance(c, Cohort) and c.n == len(c) == 20
    assert set(c.params) == set(MODEL.param_names)
    assert all(v.shape == (20,) for v in c.params.values())
    s = c[[3, 5, 7]]
    assert s.n == 3 and list(s.index) == [3, 5, 7]
    np.testing.assert_array_equal(s.params["CL"], np.asarray(c.params["CL"])[[3, 5, 7]])
    m = c.subset(np.asarray(c.covariates["SEX"]) == 1)
    assert (m.covariates["SEX"] == 1).all() and m.n == int((c.covariates["SEX"] == 1).sum())
    assert c[2:4].n == 2 and list(c[2:4].covariates.index) == [2, 3]
    df = c.to_dataframe()
    assert len(df) == 20 and {"AGE", "WT", "CL", "V", "KA", "ETA_CL", "ETA_V"} <= set(df)
    np.testing.assert_allclose(df["CL"], c.params["CL"])
    with pytest.raises(IndexError):
        c[np.ones(3, bool)]


def test_cohort_simulates():
    pop = Population(MODEL, omega={"CL": 0.09, "V": 0.04})
    c = pop.sample(jax.random.key(0), 8)
    reg = twinjax.Regimen([twinjax.Dose(100.0, "depot")])
    res = twinjax.simulate(MODEL, c.params, reg, jnp.linspace(0.0, 24.0, 5))
    conc = np.asarray(res.outputs["C"])
    assert conc.shape == (8, 5) and np.all(np.isfinite(conc))
    # elimination phase: patients with a larger CL / V have lower late concentrations
    k = np.asarray(c.params["CL"] / c.params["V"])
    late = conc[:, -1] * np.asarray(c.params["V"])
    assert stats.spearmanr(k, late).statistic < -0.8


# ------------------------------------------------------------------ plausibility and VPop
def test_plausible_mask():
    v = {"a": np.array([1.0, 2.0, np.nan, 4.0]), "b": np.array([0.0, 5.0, 1.0, -1.0])}
    m = plausible(v, {"a": (1.5, None), "b": (-2.0, 10.0)})
    np.testing.assert_array_equal(m, [False, True, False, True])
    with pytest.raises(KeyError, match="'c'"):
        plausible(v, {"c": (0, 1)})
    with pytest.raises(ValueError, match="empty"):
        plausible(v, {"a": (2.0, 1.0)})


def _plausible_population(n=20_000):
    # A broad "plausible population" of two outputs (a QSP-like biomarker and an AUC),
    # much wider than the clinical data, filtered by plausibility bounds.
    pop = Population.from_cv(MODEL, {"CL": 0.6, "V": 0.5})
    c = pop.sample(jax.random.key(11), n)
    auc = 100.0 / np.asarray(c.params["CL"])
    half = np.log(2) * np.asarray(c.params["V"] / c.params["CL"])
    mask = plausible({"AUC": auc, "THALF": half}, {"AUC": (2.0, 200.0), "THALF": (1.0, 40.0)})
    return {"AUC": auc, "THALF": half}, mask


def test_select_vpop_matches_target_normals():
    out, mask = _plausible_population()
    target = {"AUC": stats.norm(25.0, 4.0), "THALF": stats.norm(7.0, 1.2)}
    res = select_vpop(jax.random.key(3), out, target, mask=mask)
    assert mask[res.indices].all()
    assert 50 <= res.n_selected < mask.sum()
    for k in target:
        assert res.ks[k] < 0.5 * res.ks_plausible[k]  # the selection improves the fit
        assert res.pvalues[k] > 0.01  # and matches the target
        x = out[k][res.indices]
        assert x.mean() == pytest.approx(
            target[k].mean(),
            abs=3 * target[k].std() / math.sqrt(res.n_selected) + 0.05 * target[k].std(),
        )
    assert res.scale > 0 and res.probability.shape == mask.shape
    assert np.all(res.probability[~mask] == 0) and np.all(res.probability <= 1)
    assert list(res.summary().columns) == ["ks", "pvalue", "ks_plausible"]
    # deterministic given the key
    again = select_vpop(jax.random.key(3), out, target, mask=mask)
    np.testing.assert_array_equal(again.indices, res.indices)


def test_select_vpop_fixed_size_empirical_and_joint_targets():
    out, mask = _plausible_population()
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        rng.multivariate_normal([30.0, 8.0], [[25.0, 0.8 * 5 * 1.5], [0.8 * 5 * 1.5, 2.25]], 400),
        columns=["AUC", "THALF"],
    )
    # empirical marginals (KDE target density, two-sample KS)
    res = select_vpop(
        jax.random.key(4),
        out,
        {k: obs[k].values for k in obs},
        n_select=300,
        mask=mask,
        density="normal",
    )
    assert res.n_selected == 300
    for k in obs:
        assert res.ks[k] < res.ks_plausible[k]
    # joint target: a multivariate normal fit keeps the correlation of the data
    res = select_vpop(jax.random.key(4), out, obs, n_select=300, mask=mask)
    assert res.n_selected == 300
    sel = np.stack([out["AUC"][res.indices], out["THALF"][res.indices]])
    assert np.corrcoef(sel)[0, 1] > 0.5
    for k in obs:
        assert res.pvalues[k] > 1e-3
    with pytest.raises(ValueError, match="not outputs"):
        select_vpop(jax.random.key(0), out, {"X": stats.norm()})
    with pytest.raises(ValueError, match="n_select"):
        select_vpop(jax.random.key(0), out, {"AUC": stats.norm(25, 4)}, n_select=10**9)
