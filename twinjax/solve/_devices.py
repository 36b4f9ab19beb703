"""Devices: one JAX CPU device per core, and patients split over devices.

Patients are independent, so a batch split over devices needs no communication:
:func:`per_device` runs a function on each device's share with ``shard_map`` (each
device runs its own loops to their own end; a partitioned ``while_loop`` would agree
on "any patient still running" across devices at every step). Results are bitwise
the same for any number of devices.
"""

from __future__ import annotations

import os

import jax
import numpy as np

AXIS = "patients"


def use_cpu_cores(n: int | None = None) -> int:
    """Ask XLA for one CPU device per core (``n`` devices; default: the core count).

    Only effective before JAX starts its CPU backend (importing twinjax does not
    start it). A device count already in ``XLA_FLAGS`` is kept; accelerators are
    unaffected. Returns the device count asked for.
    """
    n = n or os.cpu_count() or 1
    flags = os.environ.get("XLA_FLAGS", "")
    if n > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    return n


def mesh(n_dev: int):
    """A one-axis mesh over the first ``n_dev`` of this process's devices.

    Under ``jax.distributed`` each process runs its own patients on its own devices
    (no cross-process collectives), so the mesh holds local devices only.
    """
    from jax.sharding import Mesh

    return Mesh(np.asarray(jax.local_devices()[:n_dev]), (AXIS,))


def shard(tree, n_dev: int):
    """Place every leaf split along its leading (patient) axis over ``n_dev`` devices."""
    if n_dev <= 1:
        return tree
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    sh = NamedSharding(mesh(n_dev), P(AXIS))
    return jax.tree.map(lambda a: jax.device_put(a, sh), tree)


def per_device(fn, n_dev: int, batched: tuple, shared: tuple = ()):
    """``fn(*batched, *shared)`` with ``batched`` split over ``n_dev`` devices.

    ``batched``: arguments whose leaves have the leading patient axis (its length a
    multiple of ``n_dev``); ``shared``: arguments every device gets whole. The
    outputs are per patient and come back concatenated along that axis.
    """
    from jax.sharding import PartitionSpec as P

    return jax.shard_map(
        fn,
        mesh=mesh(n_dev),
        in_specs=(P(AXIS),) * len(batched) + (P(),) * len(shared),
        out_specs=P(AXIS),
        check_vma=False,
    )(*batched, *shared)
