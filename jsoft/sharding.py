"""The device mesh and where every array lives on it.

Mesh axes are `data`, `fsdp` and `tensor` (DESIGN.md section 5), sized from the config's `mesh`
(-1: all remaining devices). Frozen weights are sharded by rules over the logical axis names that
the backbones put on their parameters (`out_sharding` metadata: vocab, embed, mlp, heads, kv,
joined_kv); trainable prompts and heads are small and replicated; batches are split over
data x fsdp. A logical axis takes the mesh axes of its rule that are still free in that array and
divide its size, so every model runs on every mesh (an axis that does not divide is replicated).

The axes are `AxisType.Auto`: the compiler propagates shardings through the model, whose code
names no mesh. `Explicit` axes would make every contraction over a sharded dimension an error
unless the model annotated its outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

# logical axis -> mesh axes it may be split over, in order of preference
RULES: dict[str, tuple[str, ...]] = {
    "vocab": ("tensor", "fsdp"),
    "mlp": ("tensor", "fsdp"),
    "heads": ("tensor",),
    "joined_kv": ("tensor",),
    "embed": ("fsdp",),
    "kv": (),
    "expert": (),  # a mixture of experts' stacked weights: split over their embed / mlp axes instead
}


def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Sizes for (data, fsdp, tensor); one size may be -1 (the remaining devices). Uses the first
    prod(sizes) devices, so a size-1 mesh runs on one device of many."""
    unknown = sorted(set(axis_sizes) - set(AXES))
    if unknown:
        raise ValueError(f"mesh.{unknown[0]} is not a mesh axis; the axes are {list(AXES)}")
    sizes = [int(axis_sizes.get(a, 1)) for a in AXES]
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError(f"at most one mesh axis may be -1; got mesh={dict(zip(AXES, sizes))}")
    for a, s in zip(AXES, sizes):
        if s == 0 or s < -1:
            raise ValueError(f"mesh.{a}={s} must be a positive size or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh={dict(zip(AXES, sizes))}: {num_devices} devices are not a multiple of {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) > num_devices:
        raise ValueError(f"mesh={dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices; "
                         f"there are {num_devices}")
    return tuple(sizes)


def make_mesh(axis_sizes: Mapping[str, int], devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(axis_sizes, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                         devices=devices[:math.prod(shape)])


def logical_to_spec(names: tuple | None, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> PartitionSpec:
    """Resolve logical axis names to a PartitionSpec with the rules above."""
    if not names or len(shape) < 2:  # vectors (norms, biases) are small: replicated
        return PartitionSpec()
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        take = []
        for axis in RULES.get(name, ()) if name else ():
            n = mesh.shape[axis]
            if axis in used or n == 1 or size % (math.prod(mesh.shape[a] for a in take) * n):
                continue
            take.append(axis)
        used.update(take)
        spec.append(None if not take else take[0] if len(take) == 1 else tuple(take))
    return PartitionSpec(*spec) if any(spec) else PartitionSpec()


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state, mesh: jax.sharding.Mesh, *, replicate: bool = False):
    """A tree of NamedShardings (a prefix of `state`): frozen weights by their logical axes,
    everything when `replicate` (trainable state, optimizer state)."""

    def one(x):
        if replicate or not _is_variable(x):
            return NamedSharding(mesh, PartitionSpec())
        names = x.get_metadata().get("out_sharding")
        return NamedSharding(mesh, logical_to_spec(names, tuple(np.shape(x.get_value())), mesh))

    return jax.tree.map(one, state, is_leaf=_is_variable)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis over data x fsdp; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH))


def batch_devices(mesh: jax.sharding.Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def put_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """This process's rows of a global batch -> global arrays sharded over data x fsdp."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def put(tree, shardings):
    """Place a host or device tree with the given shardings (a prefix tree)."""
    return jax.device_put(tree, shardings)
