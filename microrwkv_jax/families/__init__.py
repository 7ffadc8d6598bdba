"""The registry of model families: the one place a family plugs in.

    FAMILIES = {"causal": ..., "published": ..., "gpt2": ..., "rwkv4": ..., "rwkv5": ..., "rwkv6": ..., "rwkv7": ...}

Everything outside a family's own subpackage reaches it through the functions below: configs
from presets, building a model, its FLOP count, how it generates, how its PyTorch checkpoints
convert. To add a family, write its subpackage (a `FAMILY = Family(...)` in its `__init__`,
see `family.py`) and add it to FAMILIES.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from flax import nnx

from microrwkv_jax.config import ModelConfig, resolve_dtype
from microrwkv_jax.families import causal, gpt2, published, rwkv4, rwkv5, rwkv6, rwkv7
from microrwkv_jax.families.family import Family

FAMILIES = {family.arch: family for family in (causal.FAMILY, published.FAMILY, gpt2.FAMILY, rwkv4.FAMILY,
                                               rwkv5.FAMILY, rwkv6.FAMILY, rwkv7.FAMILY)}
# Preset name -> (family, ModelConfig field overrides): what `model.family` names in a training config.
PRESETS = {name: (family, overrides) for family in FAMILIES.values() for name, overrides in family.presets.items()}


def get_family(arch: str) -> Family:
    if arch not in FAMILIES:
        raise ValueError(f"arch={arch!r}: expected one of {tuple(FAMILIES)}")
    return FAMILIES[arch]


def checked(config: ModelConfig) -> ModelConfig:
    """`config`, after its family's checks (ModelConfig itself checks only what all families share)."""
    get_family(config.arch).check_config(config)
    return config


def model_config(preset: str = "hybrid", **fields) -> ModelConfig:
    """A checked ModelConfig of a preset ("hybrid", "rwkv", "gpt", "published", "gpt2", ...) with `fields` changed."""
    if preset not in PRESETS:
        raise ValueError(f"family: unknown model family {preset!r}; expected one of {sorted(PRESETS)}")
    family, overrides = PRESETS[preset]
    return checked(ModelConfig.from_dict({**overrides, **fields, "arch": family.arch}))


def model_config_from(model_cfg, vocab_size: int, backend: str) -> ModelConfig:
    """The ModelConfig of a training config's `model` section: its `family` preset, the other keys
    as fields (None keeps the preset's or the default), dtype "auto" resolved for `backend`, and
    the vocabulary of the tokenizer (`vocab_size`) unless the section sets a larger one."""
    fields = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
    preset = fields.pop("family", "hybrid")
    # None keeps the preset's value or the default; a field whose default is None and that the
    # preset does not set (e.g. gqa_window: global attention) takes the None.
    preset_fields = PRESETS[preset][1] if preset in PRESETS else {}
    keeps_none = {f.name for f in dataclasses.fields(ModelConfig) if f.default is None} - set(preset_fields)
    fields = {k: v for k, v in fields.items() if v is not None or k in keeps_none}
    fields["dtype"] = resolve_dtype(fields.get("dtype", "auto"), backend)
    if fields.setdefault("vocab_size", vocab_size) < vocab_size:
        raise ValueError(f"model.vocab_size={fields['vocab_size']}: smaller than the tokenizer's vocabulary "
                         f"({vocab_size})")
    try:
        return model_config(preset, **fields)
    except (ValueError, TypeError) as err:
        raise ValueError(f"model.{err}") from None


def config_from_dict(d: dict) -> ModelConfig:
    """A checked ModelConfig from its `to_dict()` (as checkpoints store it)."""
    return checked(ModelConfig.from_dict(d))


def build_model(config: ModelConfig, seed: int = 0):
    """A freshly initialised model of `config`'s family."""
    return get_family(checked(config).arch).model_class(config, rngs=nnx.Rngs(seed))


def abstract_model(config: ModelConfig):
    """The model's structure with shapes only (no memory, no compute)."""
    return nnx.eval_shape(lambda: build_model(config))


def train_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Model FLOPs of one training token (forward + backward = 3 x forward)."""
    return 3.0 * get_family(config.arch).forward_flops_per_token(config, seq_len)


def hf_checkpoint_family(model_type) -> Optional[Family]:
    """The family that reads Hugging Face directories of this config.json `model_type`, or None."""
    for family in FAMILIES.values():
        if family.hf_checkpoint is not None and family.hf_checkpoint.model_type == model_type:
            return family
    return None


def torch_checkpoint_family(ckpt: dict) -> Optional[Family]:
    """The family whose PyTorch checkpoint layout `ckpt` (a loaded `.pth` dict) has, or None."""
    for family in FAMILIES.values():
        if family.torch_checkpoint is not None and family.torch_checkpoint.recognizes(ckpt):
            return family
    return None
