"""BLQ data in the VPC and the GOF panel (issue #17 item 1, the diagnostics part).

A MAP fit (``fit_individual``) of the theophylline data under the published model with
a constant LLOQ of 2 mg/L (27 of 132 records censored) is enough: the VPC simulates
from the fit's population. Checked by hand against ``simulate_replicates`` with the
same key: the observed and simulated fraction below the LLOQ per bin, the censored
percentiles (NaN where they fall below the LLOQ, else the plain percentile), the extra
panel of the figure, and that data without censoring keep the plain VPC.
"""

from __future__ import annotations

import types

import jax
import matplotlib
import numpy as np
import pytest

import twinjax as tj
from twinjax.calibrate import ErrorModel, fit_individual, simulate_replicates
from twinjax.models import pk
from twinjax.plot import gof_panel, vpc, vpc_table
from twinjax.plot._vpc import binned_percentiles

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORAL = pk.one_compartment(absorption="first_order")
TRUE = dict(typical={"KA": 1.59, "CL": 2.75, "V": 31.8}, omega={"KA": 0.40, "CL": 0.07, "V": 0.02})
ERR = ErrorModel("additive", add=0.7)
LLOQ = 2.0
N_SIM, BINS = 60, 4
PLAIN_COLUMNS = ["bin", "time", "percentile", "observed", "sim_median", "sim_lo", "sim_hi", "n_obs"]
BLQ_COLUMNS = ["blq_observed", "blq_sim_median", "blq_sim_lo", "blq_sim_hi", "n_blq"]


@pytest.fixture(scope="module")
def fits():
    data = tj.data.datasets.theophylline()
    pop = tj.Population(ORAL, **TRUE)
    plain = fit_individual(ORAL, data, pop, ERR)
    cens = fit_individual(ORAL, data, pop, ERR, lloq=LLOQ)
    assert int(cens.censored.sum()) == 27 and not plain.censored.any()
    return plain, cens


def _bins(fit):
    t = fit.times[fit.mask]
    edges = np.unique(np.quantile(t, np.linspace(0, 1, BINS + 1)))
    return t, np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)


def _censored_pct(x, p, lim):
    """A percentile of values whose censored entries are a huge negative stand-in: NaN
    when it lands on them (below ``lim``), else the plain numpy percentile."""
    q = np.percentile(x, p, axis=-1)
    return np.where(q < lim, np.nan, q)


def test_blq_fractions_and_censored_percentiles_by_hand(fits):
    _, fit = fits
    key = jax.random.key(3)
    tab = vpc_table(fit, N_SIM, key, bins=BINS)
    assert list(tab.columns) == PLAIN_COLUMNS + BLQ_COLUMNS
    t, idx = _bins(fit)
    cens = fit.censored[fit.mask]
    dv = fit.dv[fit.mask]
    sim = simulate_replicates(fit, N_SIM, key)[:, fit.mask]  # the same key: same replicates
    a = 0.05
    assert tab.groupby("bin").n_blq.first().sum() == 27
    n_nan_obs = n_nan_sim = 0
    for b, g in tab.groupby("bin"):
        sel = idx == b
        row = g.iloc[0]
        # observed: a hand count of the flagged records in the bin
        assert row.n_blq == int(cens[sel].sum())
        assert row.blq_observed == pytest.approx(cens[sel].sum() / sel.sum(), abs=1e-15)
        # simulated: each replicate's fraction of values below the LLOQ, then quantiles
        frac = (sim[:, sel] < LLOQ).mean(axis=1)
        assert row.blq_sim_median == pytest.approx(np.median(frac), abs=1e-15)
        assert row.blq_sim_lo == pytest.approx(np.quantile(frac, a), abs=1e-15)
        assert row.blq_sim_hi == pytest.approx(np.quantile(frac, 1 - a), abs=1e-15)
        for _, r in g.iterrows():
            p = r.percentile
            obs = _censored_pct(np.where(cens[sel], -1e9, dv[sel]), p, LLOQ)
            sp = _censored_pct(np.where(sim[:, sel] < LLOQ, -1e9, sim[:, sel]), p, LLOQ)
            sp = np.where(np.isnan(sp), -1e12, sp)
            ref = [_censored_pct(sp, q, LLOQ) for q in (50, 100 * a, 100 * (1 - a))]
            got = [r.sim_median, r.sim_lo, r.sim_hi]
            np.testing.assert_allclose(r.observed, obs, rtol=1e-12, equal_nan=True)
            np.testing.assert_allclose(got, ref, rtol=1e-12, equal_nan=True)
            n_nan_obs += int(np.isnan(r.observed))
            n_nan_sim += int(np.isnan(r.sim_lo))
    # the censoring matters here: some observed and simulated percentiles are below the
    # LLOQ (not drawn: in the absorption bin and at the 5th percentile of the last),
    # while in the bins with (almost) nothing below the LLOQ every percentile is drawn
    assert n_nan_obs >= 2 and n_nan_sim >= 2
    full = tab[tab.blq_sim_hi < 0.05]
    assert len(full) >= 6
    assert np.isfinite(full[["observed", "sim_median", "sim_lo", "sim_hi"]].to_numpy()).all()


def test_an_explicit_lloq_censors_the_same_records(fits):
    plain, cens = fits
    key = jax.random.key(3)
    t_c = vpc_table(cens, N_SIM, key, bins=BINS)
    t_p = vpc_table(plain, N_SIM, key, bins=BINS, lloq=LLOQ)  # DV < 2 counted as BLQ
    np.testing.assert_allclose(t_p[BLQ_COLUMNS].to_numpy(), t_c[BLQ_COLUMNS].to_numpy())
    np.testing.assert_allclose(
        t_p[["observed", "sim_median", "sim_lo", "sim_hi"]].to_numpy(),
        t_c[["observed", "sim_median", "sim_lo", "sim_hi"]].to_numpy(),
        equal_nan=True,
    )
    per_record = np.where(plain.mask, LLOQ, np.nan)
    t_a = vpc_table(plain, N_SIM, key, bins=BINS, lloq=per_record)
    np.testing.assert_allclose(t_a[BLQ_COLUMNS].to_numpy(), t_c[BLQ_COLUMNS].to_numpy())
    for bad in ("two", np.ones((2, 3)), float("nan"), True):
        with pytest.raises(ValueError, match="lloq must be"):
            vpc_table(plain, N_SIM, key, lloq=bad)


def test_vpc_figure_has_the_blq_panel_and_plain_data_are_unchanged(fits):
    plain, cens = fits
    key = jax.random.key(3)
    fig, tab = vpc(cens, N_SIM, key, bins=BINS, log_y=True)
    assert len(fig.axes) == 2
    low = fig.axes[1]
    assert low.get_ylabel() == "fraction < LLOQ"
    g = tab.groupby("bin").first().sort_values("time")
    observed_line = [ln for ln in low.get_lines() if ln.get_label() == "observed"][0]
    np.testing.assert_allclose(observed_line.get_ydata(), g.blq_observed)
    # the censored records are drawn at their LLOQ in the upper panel
    labels = [c.get_label() for c in fig.axes[0].collections]
    assert "below LLOQ (27), at the LLOQ" in labels
    plt.close(fig)
    # a caller's pair of Axes gets both panels; a single Axes the upper one only
    fig2, pair = plt.subplots(2, 1)
    fig, tab2 = vpc(cens, N_SIM, key, bins=BINS, ax=pair)
    assert fig is fig2 and pair[1].get_ylabel() == "fraction < LLOQ"
    assert tab2.equals(tab)
    plt.close(fig)
    fig3, one = plt.subplots()
    fig, _ = vpc(cens, N_SIM, key, bins=BINS, ax=one)
    assert fig is fig3 and len(fig.axes) == 1
    plt.close(fig)
    # without censoring: one panel and the plain table, as binned_percentiles gives it
    fig, tab = vpc(plain, N_SIM, key, bins=BINS)
    assert len(fig.axes) == 1
    assert list(tab.columns) == PLAIN_COLUMNS
    sim = simulate_replicates(plain, N_SIM, key)[:, plain.mask]
    t = plain.times[plain.mask]
    ref = binned_percentiles(t, plain.dv[plain.mask], sim, BINS, (5.0, 50.0, 95.0), 0.9)
    np.testing.assert_array_equal(tab.to_numpy(), ref.to_numpy())
    plt.close(fig)


def test_gof_panel_draws_censored_records_at_their_limit(fits):
    _, fit = fits
    # CWRES are not what is checked here: a stand-in avoids compiling them
    stand_in = types.SimpleNamespace(individual=fit, cwres=np.where(fit.mask, 0.1, np.nan))
    fig = gof_panel(stand_in)
    assert len(fig.axes) == 8
    assert "27 censored records (27 below LLOQ, 0 above ULOQ)" in fig._suptitle.get_text()
    c = fit.censored
    for ax, x in ((fig.axes[0], fit.pred), (fig.axes[1], fit.ipred)):
        pts = [k for k in ax.collections if k.get_label().startswith("below LLOQ")]
        assert len(pts) == 1
        off = pts[0].get_offsets()
        np.testing.assert_allclose(off[:, 0], x[c])
        np.testing.assert_allclose(off[:, 1], np.full(27, LLOQ))
    plt.close(fig)


def test_censored_percentile_and_record_limits_without_a_model():
    from twinjax.plot._vpc import censored_percentile, record_limits

    x = np.array([-np.inf, -np.inf, 1.0, 2.0, 3.0, 4.0, np.inf])  # n = 7: index 6p/100
    for p, want in ((0, np.nan), (30, np.nan), (100 / 3, 1.0), (50, 2.0), (80, 3.8), (90, np.nan)):
        q, left, right = censored_percentile(x, p)
        np.testing.assert_allclose(q, want, equal_nan=True, rtol=1e-14)
        assert bool(left) == (p < 100 / 3) and bool(right) == (p > 500 / 6)
    # a failed replicate (NaN) gives NaN, neither left nor right
    q, left, right = censored_percentile(np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0]]), 50)
    np.testing.assert_array_equal(q, [np.nan, 2.0])
    assert not left.any() and not right.any()
    # limits: a censored record's is its DV; the others take their subject's smallest,
    # else the data's smallest; right-censored records give upper limits the same way
    cens = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0], [0, -1, 0]])
    dv = np.array([[3.0, 0.5, 0.4], [2.0, 1.5, 1.0], [5.0, 4.0, 3.0], [9.0, 20.0, 8.0]])
    mask = np.ones(dv.shape, bool)
    mask[2, 2] = False
    ind = types.SimpleNamespace(
        times=np.tile([1.0, 2.0, 3.0], (4, 1)),
        mask=mask,
        dv=dv,
        data=types.SimpleNamespace(cens=cens),
    )
    lo, hi, below, above = record_limits(ind)
    np.testing.assert_array_equal(
        lo, [[0.4, 0.5, 0.4], [1.0, 1.0, 1.0], [0.4, 0.4, np.nan], [0.4, 0.4, 0.4]]
    )
    np.testing.assert_array_equal(hi[3], [20.0, 20.0, 20.0])
    np.testing.assert_array_equal(below, cens == 1)
    np.testing.assert_array_equal(above, cens == -1)
    # an explicit limit: records below it count as below too; flagged ones keep their DV
    lo, _, below, _ = record_limits(ind, 2.5)
    np.testing.assert_array_equal(lo[1], [2.5, 2.5, 1.0])
    np.testing.assert_array_equal(below[1], [True, True, True])
    np.testing.assert_array_equal(below[0], [False, True, True])
    no_cens = types.SimpleNamespace(**{**vars(ind), "data": types.SimpleNamespace(cens=None)})
    assert record_limits(no_cens) is None


def test_pcvpc_keeps_censored_records_and_corrects_their_limits(fits):
    """The pcVPC of censored data: values and limits corrected by the same positive
    factor, so censoring is decided before the correction; by hand with the same key."""
    from twinjax.plot import pcvpc, pcvpc_table

    _, fit = fits
    key = jax.random.key(3)
    tab = pcvpc_table(fit, N_SIM, key, bins=BINS)
    assert list(tab.columns) == PLAIN_COLUMNS + BLQ_COLUMNS
    m = fit.mask & (fit.pred > 0)
    t, dv, pred, cens = fit.times[m], fit.dv[m], fit.pred[m], fit.censored[m]
    assert cens.sum() > 0  # censored records are used, not left out
    sim = simulate_replicates(fit, N_SIM, key)[:, m]
    edges = np.unique(np.quantile(t, np.linspace(0, 1, BINS + 1)))
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    a = 0.05
    assert tab.groupby("bin").n_blq.first().sum() == int(cens.sum())
    n_nan = 0
    for b, g in tab.groupby("bin"):
        sel = idx == b
        corr = np.median(pred[sel]) / pred[sel]
        lim = LLOQ * corr  # each record's corrected limit
        row = g.iloc[0]
        # fractions: those of the uncorrected values (censoring unchanged by the factor)
        assert row.blq_observed == pytest.approx(cens[sel].mean(), abs=1e-15)
        frac = (sim[:, sel] < LLOQ).mean(axis=1)
        assert row.blq_sim_median == pytest.approx(np.median(frac), abs=1e-15)
        for _, r in g.iterrows():
            p = r.percentile
            o = np.where(cens[sel], -1e9, dv[sel] * corr)
            s = np.where(sim[:, sel] < LLOQ, -1e9, sim[:, sel] * corr)
            assert np.array_equal(sim[:, sel] * corr < lim, sim[:, sel] < LLOQ)
            obs = _censored_pct(o, p, -1e8)
            sp = _censored_pct(s, p, -1e8)
            sp = np.where(np.isnan(sp), -1e12, sp)
            ref = [_censored_pct(sp, q, -1e8) for q in (50, 100 * a, 100 * (1 - a))]
            np.testing.assert_allclose(r.observed, obs, rtol=1e-12, equal_nan=True)
            np.testing.assert_allclose(
                [r.sim_median, r.sim_lo, r.sim_hi], ref, rtol=1e-12, equal_nan=True
            )
            n_nan += int(np.isnan(r.observed))
    assert n_nan >= 1  # some observed percentile falls below the LLOQ
    fig, tab2 = pcvpc(fit, N_SIM, key, bins=BINS)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "fraction < LLOQ"
    assert tab2.equals(tab)
    plt.close(fig)


def test_fraction_above_the_upper_limit_per_bin():
    """Right-censored records: the table has the observed and simulated fraction above
    the upper limit per bin (hand counts), and the panel draws it."""
    from twinjax.plot._vpc import binned_percentiles_censored, draw_censoring_panel

    rng = np.random.default_rng(0)
    n, R, uloq = 40, 30, 1.5
    t = np.repeat(np.arange(4.0), 10)
    truth = rng.lognormal(0.0, 0.5, n)
    above = truth > uloq
    obs = np.where(above, uloq, truth)
    simv = rng.lognormal(0.0, 0.5, (R, n))
    lo = np.full(n, np.nan)
    hi = np.full(n, uloq)
    tab = binned_percentiles_censored(
        t, obs, simv, lo, hi, np.zeros(n, bool), above, 4, (5.0, 50.0, 95.0), 0.9
    )
    alq = ["alq_observed", "alq_sim_median", "alq_sim_lo", "alq_sim_hi", "n_alq"]
    assert set(alq) <= set(tab.columns)
    for b, g in tab.groupby("bin"):
        sel = t == b
        row = g.iloc[0]
        assert row.n_alq == int(above[sel].sum())
        assert row.alq_observed == pytest.approx(above[sel].mean(), abs=1e-15)
        frac = (simv[:, sel] > uloq).mean(axis=1)
        assert row.alq_sim_median == pytest.approx(np.median(frac), abs=1e-15)
        assert row.alq_sim_lo == pytest.approx(np.quantile(frac, 0.05), abs=1e-15)
        assert row.alq_sim_hi == pytest.approx(np.quantile(frac, 0.95), abs=1e-15)
        assert row.n_blq == 0
    # without upper limits there are no alq columns
    no_hi = binned_percentiles_censored(
        t, obs, simv, lo, np.full(n, np.nan), np.zeros(n, bool), np.zeros(n, bool), 4, (50.0,), 0.9
    )
    assert "alq_observed" not in no_hi.columns
    fig, ax = plt.subplots()
    draw_censoring_panel(ax, tab)
    assert ax.get_ylabel() == "fraction < LLOQ / > ULOQ"
    line = [ln for ln in ax.get_lines() if ln.get_label() == "observed > ULOQ"][0]
    np.testing.assert_allclose(
        line.get_ydata(), tab.groupby("bin").first().sort_values("time").alq_observed
    )
    plt.close(fig)
