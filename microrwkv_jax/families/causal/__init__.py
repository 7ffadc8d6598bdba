"""The causal x051a family: every sub-layer causal, so it trains in parallel and decodes as a
recurrence. Presets "hybrid" (the default), "rwkv" and "gpt" choose the sub-layers of a block."""

from microrwkv_jax.decoding import generate_recurrent
from microrwkv_jax.families.causal.config import PRESETS, check_config
from microrwkv_jax.families.causal.flops import forward_flops_per_token
from microrwkv_jax.families.causal.model import LanguageModel
from microrwkv_jax.families.family import Family

# Logical axes of every parameter, for sharding (microrwkv_jax.sharding): heads and hidden units
# split over the mesh's tensor axis, the rest by FSDP. Time-mixing vectors (time_decay [H],
# ln_x [H * N]) follow the heads; token-shift mixes (time_maa_* [C]) the residual width.
PARAM_AXES = {
    "wte/embedding": ("vocab", "embed"),
    "ln_f/scale": ("embed",),
    "blocks/*/norm_*/weight": ("embed",),
    "blocks/*/time_mix/output/kernel": ("heads", "embed"),
    "blocks/*/time_mix/*/kernel": ("embed", "heads"),           # receptance, key, value, gate
    "blocks/*/time_mix/ln_x/*": ("heads",),
    "blocks/*/time_mix/time_decay": ("heads",),
    "blocks/*/time_mix/time_faaaa": ("heads",),
    "blocks/*/time_maa_*": ("embed",),
    "blocks/*/channel_mix/key/kernel": ("embed", "mlp"),
    "blocks/*/channel_mix/value/kernel": ("mlp", "embed"),
    "blocks/*/channel_mix/receptance/kernel": ("embed", "embed"),
    "blocks/*/mlp/fc/kernel": ("embed", "mlp"),
    "blocks/*/mlp/proj/kernel": ("mlp", "embed"),
    "blocks/*/qkv/kernel": ("embed", "heads"),                  # swa, gqa
    "blocks/*/proj/kernel": ("heads", "embed"),
    "blocks/*/moe/router": ("embed", "experts"),
    "blocks/*/moe/w_in": ("embed", "experts", "mlp"),
    "blocks/*/moe/b_in": ("experts", "mlp"),
    "blocks/*/moe/w_out": ("experts", "mlp", "embed"),
    "blocks/*/moe/b_out": ("experts", "embed"),
}

FAMILY = Family(
    arch="causal",
    presets=PRESETS,
    model_class=LanguageModel,
    check_config=check_config,
    forward_flops_per_token=forward_flops_per_token,
    recurrent=True,
    generate=generate_recurrent,
    describe=lambda config: f"causal {list(config.layers)}",
    param_axes=PARAM_AXES,
)
