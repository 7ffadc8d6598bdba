"""RWKV-5 "Eagle" (BlinkDL's x052), for its pretrained checkpoints: run, sample at constant cost
per token, fine-tune. Presets rwkv5 (= rwkv5-0.4b), rwkv5-1.5b, rwkv5-3b, rwkv5-7b: the World
models' sizes (head size 64, the World tokenizer's 65,536 tokens)."""

from microrwkv_jax.families.blinkdl import SHELL_AXES, world_family, world_presets
from microrwkv_jax.families.rwkv5 import checkpoint_names
from microrwkv_jax.families.rwkv5.model import RWKV5, forward_flops_per_token

# Logical axes of every parameter, for sharding (microrwkv_jax.sharding); the first matching glob wins.
PARAM_AXES = {
    **SHELL_AXES,
    "blocks/*/att/*/kernel": ("embed", "heads"),                # receptance, key, value, gate
    "blocks/*/att/time_decay": ("heads", "embed"),              # [H, N]
    "blocks/*/att/time_faaaa": ("heads", "embed"),
    "blocks/*/att/time_mix_*": ("embed",),
}
PRESETS = world_presets({"rwkv5": (24, 1024), "rwkv5-0.4b": (24, 1024), "rwkv5-1.5b": (24, 2048),
                         "rwkv5-3b": (32, 2560), "rwkv5-7b": (32, 4096)})

FAMILY = world_family("rwkv5", RWKV5, forward_flops_per_token, PRESETS, PARAM_AXES, checkpoint_names, "RWKV-5")
