"""RWKV-6 "Finch" (BlinkDL's x060), for its pretrained checkpoints: run, sample at constant cost
per token, fine-tune. Presets rwkv6 (= rwkv6-1.6b), rwkv6-3b, rwkv6-7b, rwkv6-14b: the World
models' sizes (head size 64, the World tokenizer's 65,536 tokens)."""

from microrwkv_jax.families.blinkdl import SHELL_AXES, world_family, world_presets
from microrwkv_jax.families.rwkv6 import checkpoint_names
from microrwkv_jax.families.rwkv6.model import RWKV6, forward_flops_per_token

PARAM_AXES = {
    **SHELL_AXES,
    "blocks/*/att/*/kernel": ("embed", "heads"),                # receptance, key, value, gate
    "blocks/*/att/time_maa_w1": ("embed", "lora"),              # [C, 5 D]
    "blocks/*/att/time_maa_w2": ("lora", "lora", "embed"),      # [5, D, C]
    "blocks/*/att/time_decay_w1": ("embed", "lora"),
    "blocks/*/att/time_decay_w2": ("lora", "heads"),
    "blocks/*/att/time_decay": ("heads",),                      # [C]
    "blocks/*/att/time_faaaa": ("heads", "embed"),              # [H, N]
    "blocks/*/att/time_maa_*": ("embed",),
}
PRESETS = world_presets({"rwkv6": (24, 2048), "rwkv6-1.6b": (24, 2048), "rwkv6-3b": (32, 2560),
                         "rwkv6-7b": (32, 4096), "rwkv6-14b": (61, 4096)})

FAMILY = world_family("rwkv6", RWKV6, forward_flops_per_token, PRESETS, PARAM_AXES, checkpoint_names, "RWKV-6")
