"""RWKV-7 "Goose" (BlinkDL's x070), for its pretrained checkpoints: run, sample at constant cost
per token, fine-tune. Presets rwkv7 (= rwkv7-0.1b), rwkv7-0.4b, rwkv7-1.5b, rwkv7-2.9b: the World
models' sizes (head size 64, the World tokenizer's 65,536 tokens)."""

from microrwkv_jax.families.blinkdl import SHELL_AXES, world_family, world_presets
from microrwkv_jax.families.rwkv7 import checkpoint_names
from microrwkv_jax.families.rwkv7.model import RWKV7, forward_flops_per_token
from microrwkv_jax.layers.rwkv7 import TimeMix7
from microrwkv_jax.sharding import under

PARAM_AXES = {
    **{k: v for k, v in SHELL_AXES.items() if "receptance" not in k},
    **under("blocks/*/att", TimeMix7.PARAM_AXES),
}
PRESETS = world_presets({"rwkv7": (12, 768), "rwkv7-0.1b": (12, 768), "rwkv7-0.4b": (24, 1024),
                         "rwkv7-1.5b": (24, 2048), "rwkv7-2.9b": (32, 2560)})

FAMILY = world_family("rwkv7", RWKV7, forward_flops_per_token, PRESETS, PARAM_AXES, checkpoint_names, "RWKV-7")
