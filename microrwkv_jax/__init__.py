"""MicroRWKV in JAX/Flax: a causal RWKV x051a hybrid language model, and the published
architecture for loading its PyTorch checkpoints, as model families behind one registry."""

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.families import FAMILIES, PRESETS, build_model, model_config
from microrwkv_jax.families.causal.model import LanguageModel
from microrwkv_jax.loading import load_model

__all__ = ["FAMILIES", "PRESETS", "ModelConfig", "LanguageModel", "build_model", "load_model", "model_config"]
