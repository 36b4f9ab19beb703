"""Bad input raises clear errors before compilation."""

import math

import equinox as eqx
import jax.numpy as jnp
import pytest

import twinjax as tj
from twinjax.models import pd, pk
from twinjax.solve._simulate import simulate_core

T = jnp.linspace(0.0, 10.0, 11)


def _no_trace(fn, match):
    before = eqx.debug.get_num_traces(simulate_core)
    with pytest.raises(ValueError, match=match):
        fn()
    assert eqx.debug.get_num_traces(simulate_core) == before


def test_negative_volume_names_parameter_and_bounds():
    m = pk.one_compartment()
    _no_trace(
        lambda: tj.simulate(m, {"V": -3.0}, None, T),
        r"'V' = -3.0 is outside its bounds \[0, 100000\] L: it must be >= 0",
    )


def test_bioavailability_above_one():
    m = pk.one_compartment("first_order")
    _no_trace(
        lambda: tj.simulate(m, {"F": 1.2}, None, T),
        r"'F' = 1.2 is outside its bounds \[0, 1\]: it must be <= 1",
    )


def test_bad_patient_in_batch_is_named():
    m = pk.one_compartment()
    _no_trace(
        lambda: tj.simulate(m, {"CL": jnp.array([1.0, 2.0, -1.0])}, None, T),
        r"'CL' = -1.0 \(patient 2\)",
    )


def test_unknown_parameter():
    m = pk.one_compartment()
    _no_trace(lambda: tj.simulate(m, {"Cl": 1.0}, None, T), r"unknown parameter.*'Cl'.*'CL'")


def test_dose_to_unknown_compartment_lists_valid_ones():
    m = pk.one_compartment()
    reg = tj.Regimen([tj.Dose(100.0, "gut")])
    _no_trace(lambda: tj.simulate(m, {}, reg, T), r"'gut'.*\['central', 'eliminated'\]")


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(amt=-1.0), "amt = -1.0 is negative"),
        (dict(amt=1.0, rate=1.0, dur=2.0), "not both"),
        (dict(amt=1.0, addl=3), "ii > 0"),
        (dict(amt=1.0, ss=3, ii=12.0), "ss = 3"),
        (dict(amt=1.0, time=math.nan), "not finite"),
    ],
)
def test_malformed_doses(kw, match):
    with pytest.raises(ValueError, match=match):
        tj.Dose(cmt="central", **kw)


def test_times_must_be_sorted_and_nonnegative():
    m = pk.one_compartment()
    _no_trace(lambda: tj.simulate(m, {}, None, jnp.array([0.0, 2.0, 1.0])), "non-decreasing")
    _no_trace(lambda: tj.simulate(m, {}, None, jnp.array([-1.0, 2.0])), ">= 0")


def test_inconsistent_batch_sizes():
    m = pk.one_compartment()
    _no_trace(
        lambda: tj.simulate(m, {"CL": jnp.ones(3), "V": jnp.ones(2)}, None, T),
        "2 patients but another parameter has 3",
    )


def test_param_table_validates_itself():
    with pytest.raises(ValueError, match="no unit"):
        tj.Param("k", 1.0, "")
    with pytest.raises(ValueError, match="outside its bounds"):
        tj.Param("k", 5.0, "1/h", 0.0, 1.0)
    with pytest.raises(ValueError, match="finite lower bound"):
        tj.Param("k", 5.0, "1/h", transform="log")


def test_link_errors_name_the_problem():
    with pytest.raises(ValueError, match="no output 'Cp'"):
        tj.couple(
            {"pk": pk.one_compartment(), "pd": pd.IndirectResponse(1)}, [tj.Link("pk.Cp", "pd.C")]
        )
    with pytest.raises(ValueError, match="no parameter 'EC5'"):
        tj.couple(
            {"pk": pk.one_compartment(), "pd": pd.IndirectResponse(3)}, [tj.Link("pk.C", "pd.EC5")]
        )
    with pytest.raises(ValueError, match="unknown parameter"):
        tj.couple(
            {"pk": pk.one_compartment(), "pd": pd.IndirectResponse(3)},
            [tj.Link("pk.C", "pd.KOUT", "emax", {"EC": 1.0})],
        )


def test_coupled_namespaces_and_user_link():
    link = tj.Link(
        "pk.C",
        "pd.KOUT",
        "user",
        {"slope": tj.Param("slope", 0.1, "L/mg", 0, 1)},
        fn=lambda c, base, q: base * (1 + q["slope"] * c),
    )
    m = tj.couple({"pk": pk.one_compartment(), "pd": pd.IndirectResponse(4)}, [link])
    assert "link0.slope" in m.param_names and "pk.central" in m.state_names
    r = tj.simulate(m, {"pd.C": 1.0}, tj.Regimen([tj.Dose(100.0, "pk.central")]), T)
    assert int(r.status) == 0
    assert float(r["pd.R"][-1]) < 100.0  # stimulated loss lowers the response


def test_failing_patient_is_flagged_and_others_intact():
    """A patient whose ODE cannot be integrated gets a status code; others are unchanged."""
    m = pk.one_compartment()
    reg = tj.Regimen([tj.Dose(100.0, "central")])
    solver = tj.solvers.Diffrax(max_steps=50)
    good = tj.simulate(m, {"CL": jnp.array([2.0, 3.0])}, reg, T, solver=solver)
    mixed = tj.simulate(
        m,
        {"CL": jnp.array([2.0, 1e4, 3.0]), "V": jnp.array([50.0, 1e-3, 50.0])},
        reg,
        T,
        solver=solver,
    )
    assert list(map(int, mixed.status)) == [0, int(tj.Status.MAX_STEPS), 0]
    assert jnp.allclose(mixed["C"][jnp.array([0, 2])], good["C"])


def test_initial_state_override():
    m = pk.one_compartment()
    r = tj.simulate(
        m, {"CL": jnp.array([5.0, 5.0])}, None, T, y0={"central": jnp.array([100.0, 50.0])}
    )
    assert jnp.allclose(r["C"][:, 0], jnp.array([2.0, 1.0]))
    assert jnp.allclose(r["C"][0, -1], 2.0 * jnp.exp(-0.1 * 10.0), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown state"):
        tj.simulate(m, {}, None, T, y0={"gut": 1.0})
    with pytest.raises(ValueError, match="expected a scalar or"):
        tj.simulate(m, {}, None, T, y0={"central": jnp.ones(3)})
