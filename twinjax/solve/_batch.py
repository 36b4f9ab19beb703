"""The entry steps of the batched entry points, in one place.

Every batched entry point (``simulate``, the circulation's periodic steady states and
``steady_state_cohort``, the glucose closed loop, the cardiac pacing loop) does the
same around its compiled core: complete the parameters (defaults, bounds) and
broadcast them to a batch, one patient being a batch of one (:func:`batch_params`,
:func:`n_patients`, :func:`broadcast_batch`, :func:`patient_rows`); build the initial
states (:func:`initial_state`, :func:`stack_initial`); and, after the core, drop the
batch axis again for one patient (:func:`unbatch`). ``N`` is the number of patients
given (``None`` for one patient), ``nb = N or 1`` the batch the core runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp


def batch_params(
    model, params: Mapping[str, Any] | None, dtype=None, check: bool = True
) -> tuple[dict, int | None, int]:
    """The model's parameters completed and broadcast to a batch: ``(p, N, nb)``.

    ``p`` is ``{name: (nb,)}`` (missing names take their defaults, see
    :meth:`~twinjax.Model.complete`, which raises for unknown names and values outside
    their bounds), ``N`` the number of patients the parameters give (``None`` for
    scalars: one patient) and ``nb = N or 1``.
    """
    p, N = model.complete_batch(params, dtype=dtype, check=check)
    return p, N, N or 1


def n_patients(**sizes: int | None) -> tuple[int | None, int]:
    """``(N, nb)``: the number of patients that several inputs agree on.

    ``sizes``: ``{input: its number of patients, or None where it is shared by all}``
    (e.g. ``params=5, regimens=None, times=5``); ``N`` is None when every input is
    shared (one patient), and ``nb = N or 1``.

    Raises:
        ValueError: ``inconsistent numbers of patients: {input: size}``.
    """
    given = {k: v for k, v in sizes.items() if v is not None}
    if len(set(given.values())) > 1:
        raise ValueError(f"inconsistent numbers of patients: {given}")
    N = next(iter(given.values())) if given else None
    return N, N or 1


def broadcast_batch(tree, nb: int):
    """Every array of ``tree`` with its leading (patient) axis broadcast to ``nb``:
    scalars and ``(1, ...)`` arrays are shared by all patients, ``(nb, ...)`` ones
    are kept."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (nb,) + a.shape[1:]), tree)


def patient_rows(a, nb: int):
    """A row ``(T,)`` shared by all patients, or one per patient ``(N, T)``, as
    ``(nb, T)`` (save times, meal times)."""
    return jnp.broadcast_to(a, (nb, a.shape[-1]))


def initial_state(model, p: Mapping, y0: Mapping | None, nb: int, dtype) -> dict:
    """``{state: (nb,)}`` in ``dtype``: ``y0`` (scalars or ``(nb,)``, one entry per
    state of the model), by default ``model.init(p)``."""
    y = model.init(p) if y0 is None else y0
    return {k: jnp.broadcast_to(jnp.asarray(y[k], dtype), (nb,)) for k in model.state_names}


def stack_initial(model, p: Mapping, y0: Mapping | None, nb: int, dtype) -> jax.Array:
    """:func:`initial_state` stacked in the order of ``model.state_names``: ``(nb, S)``."""
    y = initial_state(model, p, y0, nb, dtype)
    return jnp.stack([y[k] for k in model.state_names], -1)


def unbatch(tree, N: int | None):
    """``tree`` as it is for a batch (``N`` patients), or with the batch axis of every
    array dropped for one patient (``N`` None)."""
    if N is not None:
        return tree
    return jax.tree.map(lambda a: a[0], tree)
