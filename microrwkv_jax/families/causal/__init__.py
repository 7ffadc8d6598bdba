"""The causal x051a family: every sub-layer causal, so it trains in parallel and decodes as a
recurrence. Presets "hybrid" (the default), "rwkv" and "gpt" choose the sub-layers of a block."""

from microrwkv_jax.decoding import generate_recurrent
from microrwkv_jax.families.causal.config import PRESETS, check_config
from microrwkv_jax.families.causal.flops import forward_flops_per_token
from microrwkv_jax.families.causal.model import LanguageModel
from microrwkv_jax.families.family import Family

FAMILY = Family(
    arch="causal",
    presets=PRESETS,
    model_class=LanguageModel,
    check_config=check_config,
    forward_flops_per_token=forward_flops_per_token,
    recurrent=True,
    generate=generate_recurrent,
    describe=lambda config: f"causal {list(config.layers)}",
)
