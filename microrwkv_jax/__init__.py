"""MicroRWKV in JAX/Flax: a causal RWKV x051a hybrid language model, and the published
architecture for loading its PyTorch checkpoints, as model families behind one registry.

The names below are imported on first use, so that the data tools (`microrwkv_jax.data`, which
need no JAX) start in a fraction of a second and their worker processes stay small.
"""

import importlib

_EXPORTS = {"ModelConfig": "microrwkv_jax.config", "FAMILIES": "microrwkv_jax.families",
            "PRESETS": "microrwkv_jax.families", "build_model": "microrwkv_jax.families",
            "model_config": "microrwkv_jax.families", "LanguageModel": "microrwkv_jax.families.causal.model",
            "load_model": "microrwkv_jax.loading"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
