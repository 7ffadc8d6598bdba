"""MicroRWKV in JAX/Flax: a causal RWKV x051a hybrid language model, and the published
architecture for loading its PyTorch checkpoints."""

from microrwkv_jax.checkpoints import build_model, load_model
from microrwkv_jax.config import FAMILIES, ModelConfig
from microrwkv_jax.model import LanguageModel

__all__ = ["FAMILIES", "ModelConfig", "LanguageModel", "build_model", "load_model"]
