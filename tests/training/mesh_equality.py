"""Run by tests/training/test_sharding.py in a subprocess with 8 CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8):

    python -m tests.training.mesh_equality FAMILY [FAMILY ...]

For each family, three training steps of a small model on one device and on the meshes
(data, fsdp, tensor) = (1,8,1), (2,2,2), from the same parameters and batches.
Prints one JSON line per family: per mesh, the losses, the largest relative L2 error of any
parameter and of all of them together against the one-device run, the bytes of parameters and optimizer state on each
device, the compiled step's argument bytes per device, and which parameters the mesh splits.
"""

import json
import sys

import jax
import ml_collections
import numpy as np

from microrwkv_jax.checkpoints import ParamCodec
from microrwkv_jax.families import abstract_model, build_model, get_family, model_config
from microrwkv_jax.sharding import bytes_per_device, make_mesh
from microrwkv_jax.training.optimizer import learning_rate_at
from microrwkv_jax.training.steps import ShardedSteps

# Pure fsdp, and all three axes at once. (8,1,1) and (2,4,1), pure data and data x fsdp, were
# dropped for the CI budget: (2,2,2) splits the batch too, and the trainer's tests run data
# parallelism (data=2 x tensor=2 on 4 devices; configs/text.py on 2 CPU devices).
MESHES = {"1 device": None, "1,8,1": (1, 8, 1), "2,2,2": (2, 2, 2)}
STEPS, BATCH = 3, 8

# Small models whose widths, heads, hidden units and (padded) vocabularies every mesh axis divides.
CONFIGS = {
    # (every causal sub-layer: x051a's and RWKV-7's time mixing, and the gpt preset's mlp as well)
    "hybrid": dict(preset="hybrid", n_head=4, n_kv_head=2, swa_window=8, num_experts=4, num_active_experts=2,
                   expert_dim=32, chunk_size=8,
                   layers=("time_mix", "time_mix7", "channel_mix", "swa", "gqa", "moe", "mlp")),
    "rwkv": dict(preset="rwkv", n_head=4, chunk_size=8),
    "gpt": dict(preset="gpt", n_head=4, n_kv_head=2),
    "published": dict(preset="published", n_layer=2, n_head=4, num_experts=4, num_active_experts=2, expert_dim=32),
    "gpt2": dict(preset="gpt2", n_head=4, n_kv_head=4),
    "rwkv4": dict(preset="rwkv4"),
    "rwkv5": dict(preset="rwkv5", n_head=4),
    "rwkv6": dict(preset="rwkv6", n_head=4, lora_dims=(8, 16)),
    "rwkv7": dict(preset="rwkv7", n_head=4, lora_dims=(8, 8, 8, 16)),
}


def train_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        learning_rate=1e-2, min_learning_rate=1e-3, warmup_steps=0, num_train_steps=STEPS, weight_decay=0.1,
        beta1=0.9, beta2=0.99, grad_clip=1.0, grad_accum_steps=1, moe_aux_weight=0.01, loss_chunk_elements=None))


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def run_family(name: str) -> dict:
    fields = {"n_layer": 1, **CONFIGS[name]}    # (one block: each family's every kind of parameter, compiled fast)
    config = model_config(fields.pop("preset"), vocab_size=97, block_size=32, n_embd=64, **fields)
    codec = ParamCodec(abstract_model(config))
    initial = {k: np.asarray(v) for k, v in codec.flat(build_model(config, seed=0)).items()}
    batches = np.random.default_rng(0).integers(0, 97, (STEPS, BATCH, config.block_size + 1)).astype(np.int32)
    results, reference = {}, None
    for label, shape in MESHES.items():
        devices = jax.devices()[:1] if shape is None else jax.devices()
        mesh_cfg = {} if shape is None else dict(zip(("data", "fsdp", "tensor"), shape))
        steps = ShardedSteps(codec, train_config(), get_family(config.arch).param_axes, make_mesh(mesh_cfg, devices))
        params, opt_state = steps.init(initial)
        compiled = steps.compile(params, opt_state, batches.shape[1:])
        losses = []
        for i, batch in enumerate(batches):
            params, opt_state, metrics = compiled(params, opt_state, jax.device_put(batch, steps.batch_sharding),
                                                  np.float32(learning_rate_at(train_config(), i)))
            losses.append(float(metrics["loss"]))
        final = {k: np.asarray(v) for k, v in params.items()}
        if reference is None:
            reference = final
        worst = max(final, key=lambda k: rel_err(final[k], reference[k]))
        everything = lambda params: np.concatenate([np.ravel(params[k]) for k in sorted(params)])
        results[label] = {
            "losses": losses,
            "all_params_err": rel_err(everything(final), everything(reference)),
            "worst_param": worst, "worst_param_err": rel_err(final[worst], reference[worst]),
            "param_bytes": [int(b) for b in bytes_per_device(params).values()],
            "opt_state_bytes": [int(b) for b in bytes_per_device(opt_state).values()],
            "argument_bytes": int(compiled.memory_analysis().argument_size_in_bytes),
            "split_over": {axis: sorted(k for k, s in steps.param_shardings.items() if axis in s.spec)
                           for axis in ("fsdp", "tensor")},
        }
    total = sum(int(np.prod(s)) * 4 for s in codec.shapes.values())
    fsdp_divisible = sorted(k for k, shape in codec.shapes.items() if any(n % 8 == 0 for n in shape))
    return {"param_bytes_total": total, "fsdp_divisible": fsdp_divisible, "meshes": results}


if __name__ == "__main__":
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    for name in sys.argv[1:]:
        print(json.dumps({name: run_family(name)}), flush=True)
