"""The entry steps shared by the batched entry points (``solve/_batch.py``): no
integration here, only the completed, broadcast and unbatched inputs."""

import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj
from twinjax.models import pk
from twinjax.solve._batch import (
    batch_params,
    broadcast_batch,
    initial_state,
    n_patients,
    patient_rows,
    stack_initial,
    unbatch,
)


def test_batch_params_one_patient_is_a_batch_of_one_and_a_cohort_keeps_its_size():
    model = pk.one_compartment()
    p, N, nb = batch_params(model, {"CL": 2.0}, jnp.float64)
    assert N is None and nb == 1
    assert all(v.shape == (1,) for v in p.values()) and set(p) == set(model.param_names)
    assert float(p["CL"][0]) == 2.0
    p, N, nb = batch_params(model, {"CL": jnp.array([1.0, 2.0, 3.0])}, jnp.float64)
    assert N == 3 and nb == 3 and all(v.shape == (3,) for v in p.values())
    with pytest.raises(ValueError, match="'CL'"):  # the model's own bounds check
        batch_params(model, {"CL": -1.0}, jnp.float64)


def test_n_patients_agrees_or_names_the_inputs():
    assert n_patients(params=None, regimens=None, times=None) == (None, 1)
    assert n_patients(params=4, regimens=None, times=4) == (4, 4)
    with pytest.raises(ValueError, match=r"inconsistent numbers of patients: \{'params': 3, "):
        n_patients(params=3, regimens=2, times=None)


def test_simulate_refuses_inconsistent_patients_before_compiling():
    model = pk.one_compartment()
    regs = [tj.Regimen([tj.Dose(100.0, "central")])] * 2
    with pytest.raises(ValueError, match=r"\{'params': 3, 'regimens': 2\}"):
        tj.simulate(model, {"CL": jnp.array([1.0, 2.0, 3.0])}, regs, jnp.linspace(0, 1, 3))


def test_broadcast_rows_initial_states_and_unbatch():
    tree = {"a": jnp.array([1.0]), "b": jnp.ones((1, 2)), "c": jnp.arange(3.0)}
    out = broadcast_batch(tree, 3)
    assert out["a"].shape == (3,) and out["b"].shape == (3, 2) and out["c"].shape == (3,)
    assert patient_rows(jnp.arange(4.0), 2).shape == (2, 4)
    np.testing.assert_array_equal(patient_rows(jnp.ones((2, 4)), 2), np.ones((2, 4)))
    model = pk.one_compartment()
    p, _, nb = batch_params(model, {"V": jnp.array([10.0, 20.0])}, jnp.float64)
    y = initial_state(model, p, None, nb, jnp.float64)
    assert set(y) == set(model.state_names) and all(v.shape == (2,) for v in y.values())
    given = {s: 1.0 + i for i, s in enumerate(model.state_names)}
    Y = stack_initial(model, p, given, nb, jnp.float64)
    assert Y.shape == (2, len(model.state_names)) and Y.dtype == jnp.float64
    np.testing.assert_array_equal(Y[1], [given[s] for s in model.state_names])
    one = unbatch({"x": jnp.array([5.0]), "s": jnp.zeros((1,), jnp.int32)}, None)
    assert one["x"].shape == () and float(one["x"]) == 5.0 and one["s"].shape == ()
    kept = unbatch({"x": jnp.array([5.0])}, 1)
    assert kept["x"].shape == (1,)
