"""The GPT-style baseline (causal attention + MLP, rotary positions) on the built-in stories."""

from configs.tiny import base_config


def get_config():
    c = base_config()
    c.model.family = "gpt"
    c.model.n_kv_head = 4        # plain multi-head attention
    return c
