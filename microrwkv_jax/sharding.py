"""Where every array of a run lives on the devices: the mesh, the rules, the shardings.

The mesh has three axes (config `mesh.data`, `mesh.fsdp`, `mesh.tensor`; their product is the
device count, and one of them may be -1: "the rest"):

    data     data parallelism: the batch is split, the parameters replicated
    fsdp     fully-sharded data parallelism (ZeRO-3): the batch is split, and every parameter
             and its optimizer state too, each along its largest axis that fsdp divides;
             XLA gathers a parameter where it is used and reduce-scatters its gradient
    tensor   tensor parallelism: attention heads, feed-forward hidden units and the vocabulary
             are split; XLA inserts the collectives the products need

A family says what each parameter's axes mean by logical names (`Family.param_axes`: a glob of
parameter names -> one name per axis, e.g. "blocks/*/mlp/fc/kernel": ("embed", "mlp")), built
from the `PARAM_AXES` its shared layers declare for their own parameters (`under`), and the one
table below, LOGICAL_AXIS_RULES, says which mesh axis each logical name is split over. Nothing
else in the library places a parameter: the trainer, evaluation and sampling all ask here.

Sharding changes where numbers are computed, not what they are: a run gives the same losses
and parameters on any mesh, to float32 reduction order (tests/training/test_sharding.py).
"""

from __future__ import annotations

import fnmatch
import os
from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")          # the batch is split over both: FSDP is data parallelism too

# Logical axis name -> the mesh axis it is split over (None: never split by name; `fsdp` may still
# take it). A name whose size the mesh axis does not divide stays whole.
LOGICAL_AXIS_RULES = {
    "vocab": "tensor",       # rows of an embedding or output head
    "heads": "tensor",       # attention / time-mixing channels, H * N (and per-head vectors)
    "mlp": "tensor",         # feed-forward and expert hidden units
    "embed": None,           # the residual width C: every layer reads all of it
    "experts": None,         # a handful of experts; every expert runs on every token
    "positions": None,       # rows of a learned position embedding
    "lora": None,            # the small inner dimension of a low-rank (LoRA) projection
}


class MeshError(ValueError):
    """A mesh the devices cannot form; the message is one line."""



def split_cpu_devices(count: int) -> None:
    """Make JAX's CPU backend `count` devices (XLA's host device count), so that a mesh splits the
    batch over them: XLA runs most operations of a small model on one thread each, and data
    parallelism over one device per core keeps every core busy (BENCHMARKS.md: 1.5x the tokens/s
    of a 4 x 128 GPT on 2 cores). Effective only before JAX starts its CPU backend, so train.py
    calls it first; an XLA_FLAGS device count set by the user wins."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()

def mesh_shape(mesh_cfg: Mapping, device_count: int) -> tuple:
    """(data, fsdp, tensor) from a config's `mesh` section ({"data": -1, "fsdp": 1, "tensor": 1}
    by default), with a -1 resolved to the devices left over. MeshError when they do not multiply
    to `device_count`."""
    sizes = [int(mesh_cfg.get(axis, -1 if axis == "data" else 1)) for axis in MESH_AXES]
    spec = ", ".join(f"{axis}={size}" for axis, size in zip(MESH_AXES, sizes))
    if sizes.count(-1) > 1 or any(size == 0 or size < -1 for size in sizes):
        raise MeshError(f"mesh {spec}: each axis needs a positive size, or -1 (the rest) on at most one axis")
    known = int(np.prod([size for size in sizes if size != -1]))
    if -1 in sizes:
        if device_count % known:
            raise MeshError(f"mesh {spec}: {known} does not divide the device count, {device_count}")
        sizes[sizes.index(-1)] = device_count // known
    if int(np.prod(sizes)) != device_count:
        raise MeshError(f"mesh {spec}: {int(np.prod(sizes))} devices, but the device count is {device_count}")
    return tuple(sizes)


def make_mesh(mesh_cfg: Optional[Mapping] = None, devices: Optional[Sequence] = None) -> Mesh:
    """The ("data", "fsdp", "tensor") mesh of `devices` (default: all of them, every process's).
    Its axes are Auto: jit propagates shardings from the arguments, as GSPMD does."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg or {}, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def host_device():
    """This process's CPU device (host memory), or None (the default device) where JAX runs
    without a CPU backend."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return None


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of a batch [B, ...] split over data x fsdp."""
    return NamedSharding(mesh, P(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch is split."""
    return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))


def under(prefix: str, axes: Mapping[str, tuple]) -> dict:
    """A layer's `PARAM_AXES` (names relative to the layer) as entries of a family's table, for
    the layer at `prefix` (a glob): under("blocks/*/mlp", MLP.PARAM_AXES)."""
    return {f"{prefix}/{name}": logical for name, logical in axes.items()}


def logical_axes(param_axes: Mapping[str, tuple], name: str, ndim: int) -> tuple:
    """The logical axis names of parameter `name` from its family's table (the first glob that
    matches); all None when none does. A table entry of the wrong rank is a bug in the family.
    A LoRA adapter (`training.lora`: W@lora_a [in, r], W@lora_b [r, out]) takes its matrix's
    axis on the side it shares with it, the rank unsharded."""
    if "@lora_" in name:
        matrix, part = name.rsplit("@lora_", 1)
        axes = logical_axes(param_axes, matrix, 2)
        return (axes[0], None) if part == "a" else (None, axes[1])
    for pattern, axes in param_axes.items():
        if fnmatch.fnmatchcase(name, pattern):
            if len(axes) != ndim:
                raise ValueError(f"param_axes[{pattern!r}] = {axes} names {len(axes)} axes; {name} has {ndim}")
            return tuple(axes)
    return (None,) * ndim


def partition_spec(shape: Sequence[int], axes: Sequence[Optional[str]], mesh: Mesh) -> P:
    """The PartitionSpec of an array of `shape` whose axes have logical names `axes`.

    1. Each logical name is split over its mesh axis (LOGICAL_AXIS_RULES) where that divides it.
    2. FSDP: the largest remaining axis that `fsdp` divides is split over it (the first of equal
       ones). An array with no such axis (a vector of odd length) stays replicated over fsdp."""
    spec = []
    for size, name in zip(shape, axes):
        mesh_axis = LOGICAL_AXIS_RULES.get(name) if name else None
        spec.append(mesh_axis if mesh_axis and mesh.shape[mesh_axis] > 1 and size % mesh.shape[mesh_axis] == 0
                    else None)
    fsdp = mesh.shape["fsdp"]
    if fsdp > 1:
        free = [i for i, size in enumerate(shape) if spec[i] is None and size % fsdp == 0]
        if free:
            spec[max(free, key=lambda i: (shape[i], -i))] = "fsdp"
    return P(*spec)


def param_shardings(shapes: Mapping[str, tuple], param_axes: Mapping[str, tuple], mesh: Mesh) -> dict:
    """{name: NamedSharding} for flat parameters of these shapes (`ParamCodec.shapes`)."""
    return {name: NamedSharding(mesh, partition_spec(shape, logical_axes(param_axes, name, len(shape)), mesh))
            for name, shape in shapes.items()}


def state_shardings(abstract_state, params: Mapping[str, NamedSharding], mesh: Mesh):
    """Shardings of an optimizer state (`jax.eval_shape(optimizer.init, params)`): a leaf that
    belongs to a parameter (its path holds the parameter's name and it has the parameter's shape,
    e.g. Adam's two moments) is sharded as the parameter; anything else (step counts) is replicated."""
    replicated = NamedSharding(mesh, P())

    def sharding(path, leaf):
        for key in path:
            name = getattr(key, "key", None)
            if name in params and len(params[name].spec) == leaf.ndim and _fits(leaf.shape, params[name].spec, mesh):
                return params[name]
        return replicated

    return jax.tree_util.tree_map_with_path(sharding, abstract_state)


def _fits(shape, spec: P, mesh: Mesh) -> bool:
    return all(axis is None or shape[i] % mesh.shape[axis] == 0 for i, axis in enumerate(spec))


def with_shardings(abstract_tree, shardings):
    """ShapeDtypeStructs of `abstract_tree` carrying `shardings`: what an ahead-of-time
    compilation lowers with, no memory needed."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def bytes_per_device(tree) -> dict:
    """{device: bytes of `tree`'s arrays held on it} from the arrays' addressable shards."""
    held = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return held
