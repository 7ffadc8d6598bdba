"""python -m benchmarks.adapt_memory [--preset rwkv7-0.1b] [--lora_rank 8]

The optimizer state each way of training keeps, counted from its shapes (`jax.eval_shape`, no
memory allocated): every parameter (tune=all), the initial WKV states (tune=state) and LoRA
adapters on the blocks' matrices (tune=lora), as train.py builds them. One JSON line each."""

import argparse
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from microrwkv_jax.checkpoints import ParamCodec
from microrwkv_jax.families import abstract_model, model_config
from microrwkv_jax.training.lora import LoraCodec
from microrwkv_jax.training.optimizer import make_optimizer


def state_bytes(tune: str, preset: str, rank: int) -> dict:
    config = model_config(preset, time_state=tune == "state")
    codec = ParamCodec(abstract_model(config))
    if tune == "lora":
        codec = LoraCodec(codec, ("blocks/*",), rank)
    cfg = ml_collections.ConfigDict(dict(tune=tune, grad_clip=1.0, beta1=0.9, beta2=0.99, weight_decay=0.1))
    params = {name: jax.ShapeDtypeStruct(shape, jnp.float32) for name, shape in codec.shapes.items()}
    state = jax.eval_shape(make_optimizer(cfg, codec.linear_maps).init, params)
    leaves = jax.tree_util.tree_leaves(state)
    return {"bench": "adapt_memory", "preset": preset, "tune": tune, "lora_rank": rank if tune == "lora" else None,
            "parameters": int(sum(np.prod(s) for s in codec.shapes.values())),
            "optimizer_state_bytes": int(sum(np.prod(x.shape) * x.dtype.itemsize for x in leaves))}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="rwkv7-0.1b")
    parser.add_argument("--lora_rank", type=int, default=8)
    args = parser.parse_args()
    for tune in ("all", "state", "lora"):
        print(json.dumps(state_bytes(tune, args.preset, args.lora_rank)))


if __name__ == "__main__":
    main()
