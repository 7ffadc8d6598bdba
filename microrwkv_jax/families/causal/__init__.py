"""The causal x051a family: every sub-layer causal, so it trains in parallel and decodes as a
recurrence. Presets "hybrid" (the default), "rwkv" and "gpt" choose the sub-layers of a block."""

from microrwkv_jax.decoding import generate_recurrent
from microrwkv_jax.families.causal.config import PRESETS, check_config
from microrwkv_jax.families.causal.flops import forward_flops_per_token
from microrwkv_jax.families.causal.model import LanguageModel
from microrwkv_jax.families.family import Family
from microrwkv_jax.layers.attention import CausalSelfAttention
from microrwkv_jax.layers.mlp import MLP
from microrwkv_jax.layers.moe import TinyMoE
from microrwkv_jax.layers.rwkv import ChannelMix, TimeMix
from microrwkv_jax.layers.rwkv7 import TimeMix7
from microrwkv_jax.sharding import under

# Logical axes of every parameter, for sharding (microrwkv_jax.sharding): each layer declares its own.
PARAM_AXES = {
    "wte/embedding": ("vocab", "embed"),
    "ln_f/*": ("embed",),
    "blocks/*/norm_*/weight": ("embed",),
    **under("blocks/*/time_mix", TimeMix.PARAM_AXES),
    **under("blocks/*/time_mix7", TimeMix7.PARAM_AXES),
    **under("blocks/*/channel_mix", ChannelMix.PARAM_AXES),
    **under("blocks/*/swa", CausalSelfAttention.PARAM_AXES),
    **under("blocks/*/gqa", CausalSelfAttention.PARAM_AXES),
    **under("blocks/*/mlp", MLP.PARAM_AXES),
    **under("blocks/*/moe", TinyMoE.PARAM_AXES),
}

FAMILY = Family(
    arch="causal",
    presets=PRESETS,
    model_class=LanguageModel,
    check_config=check_config,
    forward_flops_per_token=forward_flops_per_token,
    recurrent=True,
    stateful_score=lambda config: set(config.layers) <= {"time_mix", "time_mix7", "channel_mix", "moe", "mlp"},
    generate=generate_recurrent,
    describe=lambda config: f"causal {list(config.layers)}",
    param_axes=PARAM_AXES,
)
