"""Load a model from any checkpoint this project reads: a model directory, a training run
directory (its newest checkpoint), a Hugging Face model directory or a PyTorch `.pth` file of a
family that converts them."""

from __future__ import annotations

import pathlib

import numpy as np

from microrwkv_jax.checkpoints import is_model_dir, model_from_flat_params, restore_model_dir_params, restore_run_params
from microrwkv_jax.convert import read_hf_model_dir, read_torch_file
from microrwkv_jax.data.tokenizers import get_tokenizer
from microrwkv_jax.families import config_from_dict
from microrwkv_jax.hf_checkpoint import is_hf_dir


def load_params(path):
    """(flat params, ModelConfig, tokenizer name or None if the checkpoint does not say) of a `.pth`
    file, a model dir, a Hugging Face dir or a run dir; refuses parameters that are not all finite."""
    flat, config, tokenizer_name = _read_params(pathlib.Path(path))
    for name, value in flat.items():
        if not np.all(np.isfinite(np.asarray(value, np.float32))):
            raise ValueError(f"{path}: parameter {name} holds non-finite values")
    return flat, config, tokenizer_name


def _read_params(path: pathlib.Path):
    if path.is_file():
        config, flat, _, family = read_torch_file(path)
        return flat, config, family.torch_checkpoint.default_tokenizer
    if is_model_dir(path):
        flat, config, meta = restore_model_dir_params(path)
        return flat, config, meta.get("tokenizer", "gpt2")
    if is_hf_dir(path):
        config, flat, family = read_hf_model_dir(path)
        beside = path / "tokenizer.json"
        return flat, config, str(beside) if beside.is_file() else family.hf_checkpoint.default_tokenizer
    if path.is_dir():                     # a training run directory: its newest checkpoint
        flat, meta = restore_run_params(path)
        return flat, config_from_dict(meta["model"]), meta.get("tokenizer", "gpt2")
    raise FileNotFoundError(f"{path}: no such checkpoint file or directory")


def load_model(path, dtype: str | None = None):
    """Load a model from a converted checkpoint directory, a training run directory, or a
    PyTorch `.pth` file. Returns (model, config); `dtype` overrides the compute dtype."""
    model, config, _ = load_model_and_tokenizer_name(path, dtype)
    return model, config


def load_model_and_tokenizer_name(path, dtype: str | None = None):
    """(model, config, the name of the tokenizer it was trained with) of any checkpoint."""
    flat, config, tokenizer_name = load_params(path)
    if dtype is not None:
        config = config.replace(dtype=dtype)
    return model_from_flat_params(config, flat), config, tokenizer_name


def load_model_and_tokenizer(path, dtype: str | None = None, tokenizer: str | None = None):
    """(model, config, tokenizer) of any checkpoint `load_model` reads; `tokenizer` overrides the
    one the checkpoint records (and is needed when it records none)."""
    model, config, tokenizer_name = load_model_and_tokenizer_name(path, dtype)
    tokenizer_name = tokenizer or tokenizer_name
    if tokenizer_name is None:
        raise ValueError(f"{path}: the checkpoint does not say its tokenizer; name it (e.g. the model's "
                         "tokenizer.json)")
    tokenizer = get_tokenizer(tokenizer_name)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{path}: the model's vocabulary ({config.vocab_size}) is smaller than its "
                         f"{tokenizer.name} tokenizer's ({tokenizer.vocab_size})")
    return model, config, tokenizer
