"""LoRA: low-rank adapters on a frozen model's matrices, as flat parameters beside the model's.

For each targeted matrix W [in, out] (a linear map's kernel whose name matches one of
`lora_targets`), training adds `W@lora_a` [in, r] ~ Normal(0, 1 / in) and `W@lora_b` [r, out] = 0,
and the model runs with W + a @ b: at the start exactly the base model. Only the adapters train
(`optimizer.trains`); the base is frozen and gets no optimizer state. `merge` folds the adapters
into their matrices: what a run directory's checkpoint becomes when it is loaded, sampled or
exported (`convert_torch_ckpt.py --to pth`), so a LoRA-tuned model is an ordinary model.
"""

from __future__ import annotations

import fnmatch

import jax
import jax.numpy as jnp
import numpy as np

A, B = "@lora_a", "@lora_b"


def is_adapter(name: str) -> bool:
    return name.endswith((A, B))


def targets(codec, patterns) -> list:
    """The names of the linear maps' matrices (2-D) that match one of the glob `patterns`."""
    return [name for name in codec.names if name in codec.linear_maps and len(codec.shapes[name]) == 2
            and any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def adapter_shapes(codec, patterns, rank: int) -> dict:
    """{adapter name: shape} of every target."""
    shapes = {}
    for name in targets(codec, patterns):
        n_in, n_out = codec.shapes[name]
        shapes[name + A], shapes[name + B] = (n_in, rank), (rank, n_out)
    return shapes


def init_adapters(shapes: dict, seed: int) -> dict:
    """{adapter name: float32 array}: a ~ Normal(0, 1 / in), b = 0 (the merged model is the base)."""
    key = jax.random.PRNGKey(seed)
    out = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        out[name] = (np.zeros(shape, np.float32) if name.endswith(B) else
                     np.asarray(jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)) / np.sqrt(shape[0]))
    return out


def merge(flat: dict) -> dict:
    """`flat` with each adapted matrix replaced by W + a @ b and the adapters removed (arrays of
    jax or numpy; a dict without adapters comes back as it is)."""
    adapted = {name[: -len(A)] for name in flat if name.endswith(A)}
    if not adapted:
        return flat
    merged = {name: value for name, value in flat.items() if not is_adapter(name)}
    for name in adapted:
        low_rank = flat[name + A] @ flat[name + B]
        merged[name] = flat[name] + low_rank.astype(flat[name].dtype)
    return merged


class LoraCodec:
    """A `ParamCodec` over the base model's parameters and the adapters: `model(flat)` is the
    base model with its adapters merged, `shapes` and `names` include the adapters."""

    def __init__(self, codec, patterns, rank: int):
        self.base = codec
        self.adapter_shapes = adapter_shapes(codec, patterns, rank)
        if not self.adapter_shapes:
            raise ValueError(f"lora_targets={tuple(patterns)!r}: no linear map's matrix matches")
        self.shapes = {**codec.shapes, **self.adapter_shapes}
        self.names = list(self.shapes)
        self.linear_maps = codec.linear_maps

    def model(self, flat: dict):
        return self.base.model(merge(flat))

    def flat(self, model) -> dict:
        raise TypeError("a LoRA run starts from the base model's parameters and `init_adapters`")
