"""The causal family's presets and the checks its configs must pass.

| preset | layers                                              |
| ------ | --------------------------------------------------- |
| hybrid | time_mix, channel_mix, swa, gqa, moe  (the default) |
| rwkv   | time_mix, channel_mix                 (nanoRWKV)    |
| gpt    | gqa, mlp                              (GPT baseline)|

Any other choice of sub-layers is a `layers=(...)` away, e.g. RWKV-7's time mixing in the hybrid:
("time_mix7", "channel_mix", "swa", "gqa", "moe").
"""

from __future__ import annotations

from microrwkv_jax.config import HYBRID_LAYERS, ModelConfig
from microrwkv_jax.families.causal.model import SUBLAYERS

PRESETS = {
    "hybrid": {"layers": HYBRID_LAYERS},
    "rwkv": {"layers": ("time_mix", "channel_mix")},
    "gpt": {"layers": ("gqa", "mlp")},
}


def check_config(config: ModelConfig) -> None:
    if not config.layers:
        config.fail("layers", "must name at least one sub-layer")
    for name in config.layers:
        if name not in SUBLAYERS:
            config.fail("layers", f"unknown sub-layer {name!r}; expected names from {tuple(SUBLAYERS)}")
    if len(set(config.layers)) != len(config.layers):
        config.fail("layers", "names a sub-layer twice")
    if config.time_state:
        config.fail("time_state", "state tuning is for RWKV-5/6/7; the causal family has no time_state")
    if "time_mix7" in config.layers and config.lora_dims and len(config.lora_dims) != 4:
        config.fail("lora_dims", "time_mix7 takes four ranks (decay, in-context learning rate, value residual, "
                                 "gate), or () for RWKV-7's rule")
