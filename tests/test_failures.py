"""Failures look like failures (issue #13): NaN rows, one status code whatever the solver,
the rest of the cohort untouched; and the same cohort from one seed in float32 and float64."""

import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import pk
from twinjax.ode import Model, State
from twinjax.ode._param import real

TIMES = jnp.linspace(0.0, 10.0, 11)
SOLVERS = {"diffrax": tj.solvers.Diffrax, "ensemble": tj.solvers.Ensemble}


class Blowup(Model):
    """``y' = K y^2``: from ``y = 1`` (a dose at t = 5) it blows up at ``t = 5 + 1/K``."""

    @property
    def states(self):  # type: ignore[override]
        return (State("y", "1"),)

    @property
    def params(self):  # type: ignore[override]
        return (real("K", 0.0, "1/h", lower=0.0, upper=10.0),)

    def rhs(self, t, y, p, u):
        return {"y": p["K"] * y["y"] ** 2}

    def init(self, p):
        return {"y": jnp.zeros_like(p["K"])}

    def observe(self, t, y, p):
        return {"Y": 2.0 * y["y"]}


def _check(model, params, bad, regimen, solver, times=TIMES):
    """Simulate ``params`` with and without patient ``bad``; return the failure's code.

    ``check=False``: the failures are made with values on (or past) a bound, e.g. V = 0.
    """
    n = len(next(iter(params.values())))
    keep = [i for i in range(n) if i != bad]
    mixed = tj.simulate(model, params, regimen, times, solver=solver, check=False)
    good = tj.simulate(
        model,
        {k: v[jnp.array(keep)] for k, v in params.items()},
        regimen,
        times,
        solver=solver,
        check=False,
    )
    st = np.asarray(mixed.status)
    assert st[bad] != tj.Status.OK
    assert np.all(st[keep] == tj.Status.OK) and np.all(np.asarray(good.status) == tj.Status.OK)
    assert not bool(mixed.ok[bad])
    for d_mixed, d_good in ((mixed.states, good.states), (mixed.outputs, good.outputs)):
        for k in d_mixed:
            a = np.asarray(d_mixed[k])
            assert np.all(np.isnan(a[bad])), (k, a[bad])  # no 0.0, no inf: NaN
            np.testing.assert_array_equal(a[keep], np.asarray(d_good[k]), err_msg=k)
    return int(st[bad])


def test_zero_volume_is_nonfinite_under_both_solvers():
    model = pk.one_compartment()
    params = {"CL": jnp.array([2.0, 3.0, 4.0, 5.0]), "V": jnp.array([50.0, 0.0, 40.0, 60.0])}
    reg = tj.Regimen([tj.Dose(100.0, "central")])
    codes = {k: _check(model, params, 1, reg, s()) for k, s in SOLVERS.items()}
    assert codes == {k: tj.Status.NONFINITE for k in SOLVERS}


def test_zero_volume_before_the_first_dose():
    """The field is 0 * inf = NaN from the start, before any dose."""
    model = pk.one_compartment()
    params = {"CL": jnp.array([2.0, 3.0, 4.0, 5.0]), "V": jnp.array([50.0, 40.0, 60.0, 0.0])}
    reg = tj.Regimen([tj.Dose(100.0, "central", time=4.0)])
    codes = {k: _check(model, params, 3, reg, s()) for k, s in SOLVERS.items()}
    assert codes == {k: tj.Status.NONFINITE for k in SOLVERS}


def test_max_steps_is_max_steps_under_both_solvers():
    model = pk.one_compartment()
    params = {"CL": jnp.array([2.0, 1e4, 4.0, 5.0]), "V": jnp.array([50.0, 1e-3, 40.0, 60.0])}
    reg = tj.Regimen([tj.Dose(100.0, "central"), tj.Dose(100.0, "central", time=5.0)])
    codes = {k: _check(model, params, 1, reg, s(max_steps=60)) for k, s in SOLVERS.items()}
    assert codes == {k: tj.Status.MAX_STEPS for k in SOLVERS}


def test_blowup_after_a_later_dose_has_one_code():
    model = Blowup()
    params = {"K": jnp.array([0.05, 1.0, 0.01, 0.02])}
    reg = tj.Regimen([tj.Dose(1.0, "y", time=5.0)])
    codes = {k: _check(model, params, 1, reg, s()) for k, s in SOLVERS.items()}
    assert len(set(codes.values())) == 1, codes
    assert codes["diffrax"] in (tj.Status.NONFINITE, tj.Status.STEP_TOO_SMALL)


def test_single_failed_patient_is_nan():
    model = pk.one_compartment()
    reg = tj.Regimen([tj.Dose(100.0, "central")])
    for s in SOLVERS.values():
        r = tj.simulate(model, {"V": 0.0}, reg, TIMES, solver=s(), check=False)
        assert int(r.status) == tj.Status.NONFINITE
        assert np.all(np.isnan(np.asarray(r["C"]))) and np.all(np.isnan(np.asarray(r["central"])))


def test_dataframe_and_xarray_flag_failed_patients():
    model = pk.one_compartment()
    params = {"CL": jnp.array([2.0, 3.0]), "V": jnp.array([50.0, 0.0])}
    r = tj.simulate(model, params, tj.Regimen([tj.Dose(100.0, "central")]), TIMES, check=False)
    df = r.to_dataframe()
    failed = df[df["patient"] == 1]
    assert (failed["status"] == tj.Status.NONFINITE).all() and failed["C"].isna().all()
    assert not df[df["patient"] == 0]["C"].isna().any()
    assert "ok" in df and df["ok"].tolist() == [True] * len(TIMES) + [False] * len(TIMES)
    ds = r.to_xarray()
    assert list(np.asarray(ds["ok"])) == [True, False]
    s = r.summarise("C")
    assert s["n_ok"] == 1 and s["n_failed"] == 1 and s["failed"] == {"NONFINITE": 1}
    np.testing.assert_array_equal(s["mean"], np.asarray(r["C"][0]))
    assert r.failures() == {"NONFINITE": 1}


# ------------------------------------------------------------------ float32 vs float64
_SAMPLE = textwrap.dedent(
    """
    import sys, jax
    jax.config.update("jax_enable_x64", sys.argv[1] == "64")
    import numpy as np
    import twinjax as tj
    from twinjax.models import pk
    from twinjax.population import Demographics, Power

    m = pk.one_compartment()
    pop = tj.Population.from_cv(m, {"CL": 0.3, "V": 0.2}, corr={("CL", "V"): 0.4},
                                covariates=[Power("CL", "WT", 0.75)],
                                demographics=Demographics())
    c = pop.sample(jax.random.key(7), 40)
    out = {k: np.asarray(v) for k, v in c.params.items()}
    out["etas"] = np.asarray(c.etas)
    out["WT"] = np.asarray(c.covariates["WT"])
    out["dtype"] = np.array(str(c.params["CL"].dtype))
    np.savez(sys.argv[2], **out)
    """
)


def test_same_seed_same_cohort_in_float32_and_float64(tmp_path):
    res = {}
    for bits in ("32", "64"):
        path = tmp_path / f"c{bits}.npz"
        subprocess.run(
            [sys.executable, "-c", _SAMPLE, bits, str(path)], check=True, capture_output=True
        )
        res[bits] = dict(np.load(path))
    assert str(res["32"]["dtype"]) == "float32" and str(res["64"]["dtype"]) == "float64"
    for k in ("CL", "V", "etas", "WT"):
        np.testing.assert_allclose(res["32"][k], res["64"][k], rtol=1e-6, atol=1e-7, err_msg=k)
    # the float32 cohort is the float64 cohort rounded
    np.testing.assert_array_equal(res["32"]["CL"], res["64"]["CL"].astype(np.float32))


@pytest.mark.parametrize("n", [3])
def test_sampling_in_float64_leaves_x64_as_it_was(n):
    import jax

    pop = tj.Population.from_cv(pk.one_compartment(), {"CL": 0.3})
    before = jax.config.jax_enable_x64
    pop.sample(jax.random.key(0), n)
    assert jax.config.jax_enable_x64 == before
