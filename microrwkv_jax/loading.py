"""Load a model from any checkpoint this project reads: a model directory, a training run
directory (its newest checkpoint), a Hugging Face model directory or a PyTorch `.pth` file of a
family that converts them."""

from __future__ import annotations

import os

from microrwkv_jax.checkpoints import (ParamCodec, is_model_dir, materialise_params, restore_model_dir_params,
                                      restore_run_params)
from microrwkv_jax.convert import read_hf_model_dir, read_torch_file
from microrwkv_jax.data.tokenizers import get_tokenizer
from microrwkv_jax.families import abstract_model, config_from_dict, get_family
from microrwkv_jax.hf_checkpoint import is_hf_dir
from microrwkv_jax.paths import shown_path, user_path
from microrwkv_jax.sharding import param_shardings
from microrwkv_jax.training import lora


# XLA's CPU scheduler by default starts every operation as early as its inputs allow, for
# concurrency. With parameters stored below the compute precision that means converting every
# weight at the start of the program and holding a float32 copy of all of them at once (measured:
# 1.4 GB of temporaries for a 0.86 GB bf16 RWKV-4 430M, where float32 parameters need 0.2 GB).
# The memory-minimising scheduler converts each weight just before its layer uses it.
LEAN_CPU_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def use_lean_cpu_scheduler() -> None:
    """Make XLA's CPU scheduler minimise memory (see LEAN_CPU_SCHEDULER): for parameters kept in
    bf16/fp16. Effective only before JAX starts its CPU backend, so the scripts call it first."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {LEAN_CPU_SCHEDULER}".strip()


def read_params(path):
    """(flat params as arrays or readers, ModelConfig, tokenizer name or None if the checkpoint
    does not say) of a `.pth` file, a model dir, a Hugging Face dir or a run dir. Nothing is
    converted or put on a device yet: `materialise_params` then does it tensor by tensor (host
    memory peaks at about one copy of the weights), refusing parameters that are not all finite."""
    path = user_path(path)        # (orbax and the other readers see absolute paths only)
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
        flat, meta = restore_run_params(path)        # (a LoRA run's adapters merged into their matrices)
        return lora.merge(flat), config_from_dict(meta["model"]), meta.get("tokenizer", "gpt2")
    raise FileNotFoundError(f"{shown_path(path)}: no such checkpoint file or directory")


def load_model(path, dtype: str | None = None, param_dtype: str = "float32"):
    """Load a model from any checkpoint `read_params` reads. Returns (model, config); `dtype`
    overrides the compute dtype; `param_dtype` is the parameters' (bfloat16 halves the memory of
    a bf16 checkpoint evaluated or sampled, at no loss: its values are bf16 already)."""
    model, config, _ = load_model_and_tokenizer_name(path, dtype, param_dtype)
    return model, config


def load_model_and_tokenizer_name(path, dtype: str | None = None, param_dtype: str = "float32", mesh=None):
    """(model, config, the name of the tokenizer it was trained with) of any checkpoint. With a
    `mesh` (`microrwkv_jax.sharding.make_mesh`), each parameter is read straight into its shards
    as its family's sharding says, as training places it; otherwise onto the default device."""
    flat, config, tokenizer_name = read_params(path)
    if dtype is not None:
        config = config.replace(dtype=dtype)
    codec = ParamCodec(abstract_model(config))
    shardings = None if mesh is None else param_shardings(codec.shapes, get_family(config.arch).param_axes, mesh)
    params = materialise_params(config, flat, param_dtype, str(path), codec, shardings)
    return codec.model(params), config, tokenizer_name


def load_model_and_tokenizer(path, dtype: str | None = None, tokenizer: str | None = None,
                             param_dtype: str = "float32", mesh=None):
    """(model, config, tokenizer) of any checkpoint `load_model` reads; `tokenizer` overrides the
    one the checkpoint records (and is needed when it records none); `mesh`: see
    `load_model_and_tokenizer_name`."""
    model, config, tokenizer_name = load_model_and_tokenizer_name(path, dtype, param_dtype, mesh)
    tokenizer_name = tokenizer or tokenizer_name
    if tokenizer_name is None:
        raise ValueError(f"{path}: the checkpoint does not say its tokenizer; name it (e.g. the model's "
                         "tokenizer.json)")
    tokenizer = get_tokenizer(tokenizer_name)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{path}: the model's vocabulary ({config.vocab_size}) is smaller than its "
                         f"{tokenizer.name} tokenizer's ({tokenizer.vocab_size})")
    return model, config, tokenizer
