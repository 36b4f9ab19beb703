"""NPDE (Brendel et al. 2006; Comets et al. 2008): decorrelated prediction distribution
errors are N(0, 1) under the true model and shifted under a wrong one."""

import jax
import numpy as np
import pytest

import twinjax as tj
from twinjax.calibrate import (
    ErrorModel,
    fit_individual,
    npde,
    npde_from_simulations,
    npde_test,
    simulate_replicates,
)
from twinjax.models import pk

jax.config.update("jax_enable_x64", True)


def _gaussian(seed, N=60, T=6, K=1000):
    """Subjects with correlated Gaussian observations (a known predictive law)."""
    rng = np.random.default_rng(seed)
    sd = np.linspace(0.5, 1.5, T)
    C = np.outer(sd, sd) * (0.3 * np.eye(T) + 0.7)  # correlation 0.7 within a subject
    L = np.linalg.cholesky(C)
    mu = np.linspace(1.0, 5.0, T)
    obs = mu + rng.normal(size=(N, T)) @ L.T
    sims = mu + rng.normal(size=(K, N, T)) @ L.T
    return obs, sims, np.ones((N, T), bool), L


def test_npde_of_the_true_law_are_standard_normal_and_decorrelated():
    obs, sims, mask, L = _gaussian(0)
    z, pde, pd, dv = npde_from_simulations(obs, sims, mask)
    t = npde_test(z)
    assert t["n"] == obs.size
    assert abs(t["mean"]) < 0.15 and abs(t["variance"] - 1) < 0.2
    assert t["p_ks"] > 0.05 and t["p_global"] > 0.05
    # the pde lie in [1/(2K), 1 - 1/(2K)] (the npde package's edge rule)
    assert pde.min() >= 1 / 2000 and pde.max() <= 1 - 1 / 2000
    # decorrelation: the observations are strongly correlated within a subject, the
    # npde are not (lag-1 correlation), while the undecorrelated pd keep it
    c_obs = np.corrcoef(obs[:, 0], obs[:, 1])[0, 1]
    c_npde = np.corrcoef(z[:, 0], z[:, 1])[0, 1]
    assert c_obs > 0.5 and abs(c_npde) < 0.3
    assert np.corrcoef(pd[:, 0], pd[:, 1])[0, 1] > 0.5
    # observations rising above the law over time: the mean npde moves
    zs, *_ = npde_from_simulations(obs + np.linspace(0.0, 1.2, 6), sims, mask)
    ts = npde_test(zs)
    assert ts["mean"] > 0.3 and ts["p_mean"] < 1e-4 and ts["p_global"] < 1e-4
    # a constant shift of correlated observations: after the decorrelation it sits on
    # each subject's first record (the others are explained by it), so the npde are
    # not centred there but overdispersed; the global test rejects
    zc, *_ = npde_from_simulations(obs + 0.6, sims, mask)
    tc = npde_test(zc)
    assert zc[:, 0].mean() > 1.0 and tc["variance"] > 1.3 and tc["p_global"] < 1e-4
    # a too-wide spread: the variance test rejects
    mu = sims.mean(axis=(0, 1))
    tv = npde_test(npde_from_simulations(mu + 1.5 * (obs - mu), sims, mask)[0])
    assert tv["variance"] > 1.8 and tv["p_variance"] < 1e-6


def test_npde_censored_records_omit_and_cdf():
    obs, sims, mask, _ = _gaussian(2)
    lloq = 2.0
    cens = obs < lloq
    assert 0.1 < cens.mean() < 0.4
    censored_obs = np.where(cens, lloq, obs)  # a censored record's DV is its LLOQ
    z_omit, *_ = npde_from_simulations(censored_obs, sims, mask, censored=cens)
    assert np.all(np.isnan(z_omit[cens])) and np.all(np.isfinite(z_omit[~cens]))
    z_cdf, _, _, dv = npde_from_simulations(
        censored_obs, sims, mask, censored=cens, method="cdf", lloq=lloq, seed=1
    )
    assert np.all(np.isfinite(z_cdf))
    assert np.all(dv[cens] < lloq)  # imputed below the LLOQ
    t = npde_test(z_cdf)
    assert abs(t["mean"]) < 0.15 and abs(t["variance"] - 1) < 0.2 and t["p_global"] > 0.05
    # ignoring the censoring (DV = LLOQ as if measured): the npde test rejects the
    # true law
    z_naive, *_ = npde_from_simulations(censored_obs, sims, mask)
    assert npde_test(z_naive)["p_global"] < 1e-3


def test_npde_refuses_bad_input():
    obs, sims, mask, _ = _gaussian(0, N=3, T=2, K=10)
    with pytest.raises(ValueError, match="sims must be"):
        npde_from_simulations(obs, sims[:, :2], mask)
    with pytest.raises(ValueError, match="censored method"):
        npde_from_simulations(obs, sims, mask, method="ipred")
    with pytest.raises(ValueError, match="at least 2"):
        npde_from_simulations(obs, sims[:1], mask)


ORAL = pk.one_compartment(absorption="first_order")
TRUE = dict(typical={"KA": 1.59, "CL": 2.75, "V": 31.8}, omega={"KA": 0.40, "CL": 0.07, "V": 0.02})
ERR = ErrorModel("additive", add=0.7)


@pytest.fixture(scope="module")
def theo_design():
    """The theophylline design (doses, times), a dataset simulated from TRUE, and the
    true model's post-hoc fit (the FitResult whose population npde simulates)."""
    data = tj.data.datasets.theophylline()
    truth = fit_individual(ORAL, data, tj.Population(ORAL, **TRUE), ERR)
    y = simulate_replicates(truth, 1, jax.random.key(11))[0]
    return data, truth, y


def test_npde_under_the_model_and_a_misspecified_one(theo_design):
    data, truth, y = theo_design
    with pytest.raises(ValueError, match="dv must have"):
        npde(truth, 10, dv=y[:, :3])
    with pytest.raises(ValueError, match="censored="):
        npde(truth, 10, censored="ppred")
    res = npde(truth, 1000, jax.random.key(5), dv=y)
    t = res.test
    print("true model:", {k: round(v, 3) for k, v in t.items()})
    assert t["n"] == int(truth.mask.sum()) == 132
    assert abs(t["mean"]) < 0.25 and abs(t["variance"] - 1) < 0.3
    assert t["p_ks"] > 0.05 and t["p_global"] > 0.05
    tab = res.to_dataframe()
    assert list(tab.columns) == ["ID", "TIME", "DV", "PD", "PDE", "NPDE"] and len(tab) == 132
    # the same data evaluated under a model with CL 1.6 x too high: predictions too low,
    # the observations sit high in their predictive distributions
    wrong_pop = tj.Population(ORAL, typical={**TRUE["typical"], "CL": 4.4}, omega=TRUE["omega"])
    wrong = fit_individual(ORAL, data, wrong_pop, ERR)
    tw = npde(wrong, 1000, jax.random.key(5), dv=y).test
    print("CL x 1.6:", {k: round(v, 3) for k, v in tw.items()})
    # measured (seeds as here): true model mean 0.045, variance 0.98, KS p 0.95, global
    # p 1.0; CL x 1.6: mean 0.49 (5.6 standard errors of a mean of 132 N(0,1)), Wilcoxon
    # p 1.5e-6, KS p < 1e-6
    assert tw["mean"] > 0.3 and tw["p_mean"] < 1e-4 and tw["p_ks"] < 1e-4
    assert tw["p_global"] < 1e-4
    assert tw["mean"] > t["mean"] + 0.3


def test_gof_panel_eta_covariates_and_pcvpc(theo_design):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twinjax.plot import eta_covariates, gof_panel, pcvpc_table

    data, truth, _ = theo_design
    res = npde(truth, 200, jax.random.key(1))
    fig = gof_panel(truth, res, log=True, title="theophylline")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 8
    for t in ("DV vs PRED", "DV vs IPRED", "CWRES vs TIME", "CWRES vs PRED", "NPDE vs PRED"):
        assert t in titles
    assert "eta-shrinkage: KA" in fig._suptitle.get_text()
    plt.close(fig)
    fig = eta_covariates(truth)
    assert [ax.get_xlabel() for ax in fig.axes] == ["WT"] * 3  # one covariate, three etas
    plt.close(fig)
    # the pcVPC of the real data under the published model: the observed percentiles lie
    # in the simulated 90 % intervals in most bins; records with PRED 0 (time 0) left out
    tab = pcvpc_table(truth, 200, jax.random.key(2), bins=6)
    inside = (tab.observed >= tab.sim_lo) & (tab.observed <= tab.sim_hi)
    assert inside.mean() >= 0.75, tab
    assert tab.n_obs.groupby(tab.bin).first().sum() == int((truth.pred[truth.mask] > 0).sum())
