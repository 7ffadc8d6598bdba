"""The published MicroRWKV architecture, bit-faithful to its PyTorch checkpoints and not causal.

Quarantined here: its model (`model.py`), its PyTorch state-dict names (`torch_names.py`), its
re-forward sampler (`sampling.py`) and its FLOP count (`flops.py`). The "published" preset
mixes the first num_active_experts experts, as its code does (no top-k).
"""

from microrwkv_jax.families.family import Family, TorchCheckpointFormat
from microrwkv_jax.families.published import torch_names
from microrwkv_jax.families.published.flops import forward_flops_per_token
from microrwkv_jax.families.published.model import PublishedModel, check_config
from microrwkv_jax.families.published.sampling import generate_by_reforward
from microrwkv_jax.layers.rwkv import ChannelMix, TimeMix
from microrwkv_jax.sharding import under

# Logical axes of every parameter, for sharding (microrwkv_jax.sharding): the shared RWKV layers
# declare their own; this family's attention and MoE are its own.
PARAM_AXES = {
    "wte/embedding": ("vocab", "embed"),
    "wpe/embedding": ("positions", "embed"),
    "ln_f/*": ("embed",),
    **under("blocks/*/tmix", TimeMix.PARAM_AXES),
    **under("blocks/*/cmix", ChannelMix.PARAM_AXES),
    "blocks/*/sliding_attn/qkv/kernel": ("embed", "heads"),
    "blocks/*/sliding_attn/qkv/bias": ("heads",),
    "blocks/*/sliding_attn/proj/kernel": ("heads", "embed"),
    "blocks/*/grouped_attn/qkvw/kernel": ("embed", "heads"),
    "blocks/*/grouped_attn/qkvw/bias": ("heads",),
    "blocks/*/grouped_attn/out/kernel": ("heads", "embed"),
    "blocks/*_attn/*/bias": ("embed",),                         # proj, out
    "blocks/*/moe/gate/kernel": ("embed", "experts"),
    "blocks/*/moe/gate/bias": ("experts",),
    "blocks/*/moe/experts_kernel": ("experts", "embed", "mlp"),
    "blocks/*/moe/experts_bias": ("experts", "mlp"),
    "blocks/*/moe/fc/kernel": ("mlp", "embed"),
    "blocks/*/moe/fc/bias": ("embed",),
}

FAMILY = Family(
    arch="published",
    presets={"published": {}},
    model_class=PublishedModel,
    check_config=check_config,
    forward_flops_per_token=forward_flops_per_token,
    recurrent=False,
    generate=generate_by_reforward,
    describe=lambda config: (f"published MicroRWKV (not causal; {config.num_active_experts} of {config.num_experts} "
                             f"experts of width {config.expert_dim})"),
    torch_checkpoint=TorchCheckpointFormat(recognizes=torch_names.recognizes, read=torch_names.read_checkpoint,
                                           parameter_map=torch_names.published_parameter_map),
    param_axes=PARAM_AXES,
)
