"""Pacing loops split over devices: each device paces its own share of the cells.

Cells are independent, so a population split over devices needs no communication
while it is paced: every device runs its own beat and step loops to their own end
(:func:`twinjax.solve._devices.per_device`, ``shard_map``), as ``simulate_cohort``
does. A cell's arithmetic does not depend on which cells share its device, so its
states, biomarkers and status are the same for any device count (bitwise when the
population is a multiple of ``SHARE_MULTIPLE`` cells: XLA's leftover-cell code, see
there). The one
batch-wide number, the ``steps`` biomarker (the step-loop iterations of the beat:
the largest step count of the cells paced together), is the largest over the devices
(one ``pmax`` per call, after the loops), so it too is the one-device value.

On CPU, JAX shows one device unless ``XLA_FLAGS=--xla_force_host_platform_device_count``
is set before it starts (``twinjax.solve._devices.use_cpu_cores``; the CLI and the
benchmarks set it); with one device nothing here runs.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ...solve._devices import AXIS, per_device, shard

# Each device's share is padded to a multiple of this many cells: XLA's CPU code runs
# elementwise work in SIMD vectors and the leftover cells of a batch in another
# (equally accurate) instruction sequence whose rounding can differ (measured on ORd,
# one device, CI's XLA flags: cell 4 of a batch of 5, or cell 8 of 9, differs from the
# same cell in a batch of 16 by about 1e-14 after one beat). With whole vectors on
# every device, a population whose size is a multiple of this is bitwise the same for
# any device count.
SHARE_MULTIPLE = 8


def device_count(devices: int | None, nb: int, n: int | None) -> int:
    """How many devices to pace ``nb`` cells on (1: unsplit).

    ``devices``: None for all of this process's devices, else at most that many. One
    cell (``n`` None) runs unsplit; a population gets at most one device per
    ``SHARE_MULTIPLE`` cells (100 cells on 16 devices: 12 devices), so every device
    has a whole vector of cells to pace.
    """
    n_local = jax.local_device_count()
    if devices is not None:
        if isinstance(devices, bool) or int(devices) != devices or not 1 <= devices <= n_local:
            raise ValueError(f"devices = {devices!r}; this process has {n_local} device(s)")
    n_dev = n_local if devices is None else int(devices)
    if n is None:
        return 1
    return max(1, min(n_dev, nb // SHARE_MULTIPLE))


def padded_size(nb: int, n_dev: int) -> int:
    """Cells paced in all: ``n_dev`` equal shares of whole vectors (``SHARE_MULTIPLE``)."""
    share = -(-nb // n_dev)
    return n_dev * (-(-share // SHARE_MULTIPLE) * SHARE_MULTIPLE)


def pad_cells(tree, nb: int, n_dev: int):
    """Pad every ``(nb,)``-leading leaf to :func:`padded_size` cells with copies of
    the last cell (each padded cell is paced like its original, then dropped)."""
    extra = padded_size(nb, n_dev) - nb
    if not extra:
        return tree
    return jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], extra, axis=0)]), tree)


def place(tree, nb: int, n_dev: int):
    """Pad the cells to equal shares and place each device's share on it."""
    return shard(pad_cells(tree, nb, n_dev), n_dev)


def pace_split(run, p, y0, nb: int, n_dev: int):
    """``run(p, y0) -> (y, rec, status)`` for ``nb`` cells split over ``n_dev`` devices.

    The cells are padded to equal shares (:func:`place`), each device runs ``run`` on
    its own share (:func:`pace_per_device`), and the padded cells are dropped.
    ``run``: a :class:`jax.tree_util.Partial` of a module-level pacing function, so
    that its arrays are traced and the rest (the function, ``int``/``bool``
    settings) is part of the compiled program's key: no recompilation per call.
    """
    p, y0 = place((p, y0), nb, n_dev)
    y, rec, status = _pace_placed(run, n_dev, p, y0)
    return unpad(y, rec, status, nb)


@eqx.filter_jit
def _pace_placed(run, n_dev: int, p, y0):
    return pace_per_device(run, n_dev, p, y0)


def pace_per_device(run, n_dev: int, p, y0):
    """``run(p, y0) -> (y, rec, status)`` on ``n_dev`` devices.

    ``rec`` holds per-beat records with the beat axis first (``(B, N, ...)`` leaves,
    and a ``"steps"`` entry in each of its dicts that has one), ``y`` and ``status``
    the cell axis first. Returns the same structure for all the cells.
    """

    def local(p, y0):
        y, rec, status = run(p, y0)
        rec = jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), rec)  # cells first
        rec = jax.tree.map(_steps_max, rec, is_leaf=lambda x: isinstance(x, dict))
        return y, rec, status

    y, rec, status = per_device(local, n_dev, (p, y0))
    return y, jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), rec), status


def _steps_max(d):
    if isinstance(d, dict) and "steps" in d:
        return {**d, "steps": jax.lax.pmax(d["steps"], AXIS)}
    return d


def unpad(y, rec, status, nb: int):
    """Drop the padded cells (``rec`` has the beat axis first)."""
    y, status = jax.tree.map(lambda a: a[:nb], (y, status))
    return y, jax.tree.map(lambda a: a[:, :nb], rec), status
