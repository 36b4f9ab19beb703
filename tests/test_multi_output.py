"""Several outputs (issue #17 item 2): records tagged by DVID (or CMT), each output with
its own residual error model, joint PK/PD fits by MAP and FOCE-I.

The synthetic data are simulated from closed forms (1-cmt oral concentration, direct
Emax effect), independent of the ODE solver used to fit them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import twinjax as tj
from twinjax.calibrate import ErrorModel, fit_individual, fit_population, prepare_data
from twinjax.calibrate import _data as D
from twinjax.calibrate import _map as M
from twinjax.models import pd as pdm
from twinjax.models import pk
from twinjax.ode import Link, couple

PKPD = couple(
    {"pk": pk.one_compartment(absorption="first_order"), "pd": pdm.DirectEmax()},
    [Link("pk.C", "pd.C")],
)
COMP = {1: "pk.depot", 2: "pk.central"}
TRUE = {"pk.KA": 1.0, "pk.CL": 2.0, "pk.V": 20.0, "pd.E0": 10.0, "pd.EMAX": 100.0, "pd.EC50": 3.0}
OMEGA = {"pk.CL": 0.09, "pk.V": 0.04, "pd.EC50": 0.09}
ERRORS = {"pk.C": ErrorModel("proportional", prop=0.15), "pd.E": ErrorModel("additive", add=4.0)}
TIMES = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0])
DOSE = 100.0


def _simulate(n, seed, tags=(1, 2)):
    """A NONMEM frame: one dose, then C (DVID tags[0]) and E (tags[1]) at each time."""
    rng = np.random.default_rng(seed)
    eta = rng.normal(size=(n, 3)) * np.sqrt(list(OMEGA.values()))
    cl = TRUE["pk.CL"] * np.exp(eta[:, 0])
    v = TRUE["pk.V"] * np.exp(eta[:, 1])
    ec50 = TRUE["pd.EC50"] * np.exp(eta[:, 2])
    ka, k = TRUE["pk.KA"], cl / v
    t = TIMES[None]
    c = DOSE * ka / (v[:, None] * (ka - k[:, None])) * (np.exp(-k[:, None] * t) - np.exp(-ka * t))
    e = TRUE["pd.E0"] + TRUE["pd.EMAX"] * c / (ec50[:, None] + c)
    yc = c * (1 + ERRORS["pk.C"].prop * rng.normal(size=c.shape))
    ye = e + ERRORS["pd.E"].add * rng.normal(size=e.shape)
    rows = []
    for i in range(n):
        rows.append(dict(ID=i + 1, TIME=0.0, DV=".", AMT=DOSE, CMT=1, DVID="."))
        for j, tt in enumerate(TIMES):
            rows.append(dict(ID=i + 1, TIME=tt, DV=yc[i, j], AMT=0, CMT=2, DVID=tags[0]))
            rows.append(dict(ID=i + 1, TIME=tt, DV=ye[i, j], AMT=0, CMT=2, DVID=tags[1]))
    return pd.DataFrame(rows), eta


def _prior():
    return tj.Population(PKPD, typical=TRUE, omega=OMEGA)


def test_records_are_tagged_with_their_output():
    frame, _ = _simulate(2, 0)
    ds = tj.data.Dataset(frame, compartments=COMP)
    assert ds.covariate_names == []  # DVID is an observation column
    fd = prepare_data(PKPD, ds, ERRORS)
    assert fd.outputs == ("pk.C", "pd.E")
    np.testing.assert_array_equal(fd.out[0, :4], [0, 1, 0, 1])
    # names as tags, and an explicit mapping (here: the reverse order of the numbers)
    frame_n, _ = _simulate(2, 0, tags=("pk.C", "pd.E"))
    fd_n = prepare_data(PKPD, tj.data.Dataset(frame_n, compartments=COMP), ERRORS)
    np.testing.assert_array_equal(fd_n.out, fd.out)
    frame_r, _ = _simulate(2, 0, tags=(7, 3))
    fd_r = prepare_data(
        PKPD, tj.data.Dataset(frame_r, compartments=COMP), ERRORS, dvid={7: "pk.C", 3: "pd.E"}
    )
    np.testing.assert_array_equal(fd_r.out, fd.out)


def test_unknown_output_is_refused_before_compiling(monkeypatch):
    frame, _ = _simulate(2, 0)
    frame.loc[5, "DVID"] = 3  # line 7 of the CSV: a third output
    ds = tj.data.Dataset(frame, compartments=COMP)

    def no_compile(*a, **k):
        raise AssertionError("compiled before refusing the data")

    monkeypatch.setattr(M, "lm_batched", no_compile)
    monkeypatch.setattr(D, "compile_regimens", no_compile)  # prepare_data's event tables
    with pytest.raises(ValueError, match=r"line 7: DVID 3.*Allowed DVID values: 1 or 'pk.C'") as e:
        fit_individual(PKPD, ds, _prior(), ERRORS)
    assert "'pd.E'" in str(e.value)
    with pytest.raises(ValueError, match=r"line 7: DVID 3"):
        fit_population(PKPD, ds, _prior(), ERRORS)
    # a mapping to an output that is not fitted, an output the model does not have
    with pytest.raises(ValueError, match=r"dvid maps DVID 2 to 'pd.X'"):
        prepare_data(PKPD, ds, ERRORS, dvid={1: "pk.C", 2: "pd.X"})
    with pytest.raises(ValueError, match=r"unknown output 'E'; the model has"):
        prepare_data(PKPD, ds, {"pk.C": ERRORS["pk.C"], "E": ERRORS["pd.E"]})
    # two outputs in the data, one fitted: refused rather than mixed
    with pytest.raises(ValueError, match=r"DVID values \[1, 2\] but one output 'pk.C'"):
        prepare_data(PKPD, ds.subset([2]), ERRORS["pk.C"], output="pk.C")


def test_joint_map_fits_recover_the_subjects():
    """MAP twins of 40 subjects from both outputs: the estimates scatter around the
    truth as their Laplace posteriors say (mean squared z ~ 1), and EC50, which only
    the PD output informs, is estimated individually. (40 subjects: the batch shapes of
    the population fit's post-hoc step below, so the two share their compiled MAP
    program.)"""
    frame, eta = _simulate(40, 1)
    r = fit_individual(PKPD, tj.data.Dataset(frame, compartments=COMP), _prior(), ERRORS)
    assert bool(np.all(r.converged))
    assert r.outputs == ("pk.C", "pd.E") and set(r.errors) == {"pk.C", "pd.E"}
    z = (r.etas - eta) / np.sqrt(np.diagonal(r.cov_eta, axis1=1, axis2=2))
    msz = np.mean(z**2, axis=0)
    assert np.all(msz < 2.0) and np.all(msz > 0.3), msz
    # EC50 is individual: shrinkage well below 1
    assert r.shrinkage["pd.EC50"] < 0.6
    obs = r.observations()
    assert set(obs["OUTPUT"]) == {"pk.C", "pd.E"}
    # IWRES of each output on its own scale: SD about 1
    for o in ("pk.C", "pd.E"):
        assert 0.7 < float(np.std(obs.loc[obs["OUTPUT"] == o, "IWRES"])) < 1.3, o


@pytest.mark.slow
def test_joint_pkpd_focei_recovers_population_and_both_residual_errors():
    frame, _ = _simulate(40, 2)
    ds = tj.data.Dataset(frame, compartments=COMP)
    start = tj.Population(
        PKPD,
        typical={**TRUE, "pk.CL": 2.5, "pk.V": 16.0, "pd.EC50": 2.0, "pd.EMAX": 80.0},
        omega={"pk.CL": 0.2, "pk.V": 0.1, "pd.EC50": 0.2},
    )
    errors0 = {
        "pk.C": ErrorModel("proportional", prop=0.3),
        "pd.E": ErrorModel("additive", add=2.0),
    }
    r = fit_population(PKPD, ds, start, errors0, estimate=("pk.CL", "pk.V", "pd.EC50", "pd.EMAX"))
    assert r.converged, r.message
    est = r.estimates
    print("\n" + r.summary())
    truth = {
        "pk.CL": TRUE["pk.CL"],
        "pk.V": TRUE["pk.V"],
        "pd.EC50": TRUE["pd.EC50"],
        "pd.EMAX": TRUE["pd.EMAX"],
        "SIGMA_pk.C_prop": ERRORS["pk.C"].prop,
        "SIGMA_pd.E_add": ERRORS["pd.E"].add,
    }
    for k, v in truth.items():
        e, se = est.loc[k, "estimate"], est.loc[k, "se"]
        assert np.isfinite(se) and se > 0, k
        assert abs(e - v) < 3.5 * se, (k, e, v, se)
    assert r.errors["pk.C"].prop == pytest.approx(0.15, rel=0.15)
    assert r.errors["pd.E"].add == pytest.approx(4.0, rel=0.15)
    assert r.n_obs == 40 * 2 * len(TIMES)
