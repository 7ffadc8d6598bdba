"""Model directories: what `convert_torch_ckpt.py` writes and `load_model` reads.

A model directory holds
    config.json   {"model": ModelConfig fields, "tokenizer": name, ...metadata}
    params/       an orbax checkpoint of the parameters, a flat {"a/b/c": array} dict
It is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written directory under the final name.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from microrwkv_jax.config import ModelConfig

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def build_model(config: ModelConfig, seed: int = 0):
    """A freshly initialised model of `config.arch` ("causal" or "published")."""
    if config.arch == "published":
        from microrwkv_jax.published import PublishedModel
        return PublishedModel(config, rngs=nnx.Rngs(seed))
    from microrwkv_jax.model import LanguageModel
    return LanguageModel(config, rngs=nnx.Rngs(seed))


def abstract_model(config: ModelConfig):
    """The model's structure with shapes only (no memory, no compute)."""
    return nnx.eval_shape(lambda: build_model(config))


class ParamCodec:
    """Converts between a model and a flat {"blocks/0/tmix/key/kernel": array} parameter dict.

    The flat dict is what training optimises, what orbax saves and what conversion fills in;
    `model(flat)` is cheap and traceable, so a jitted loss can rebuild the module from it.
    """

    def __init__(self, model):
        self.graphdef, state = nnx.split(model, nnx.Param)
        leaves, self.treedef = jax.tree_util.tree_flatten_with_path(state)
        self.names = ["/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
                      for path, _ in leaves]
        self.shapes = {n: tuple(leaf.shape) for n, (_, leaf) in zip(self.names, leaves)}

    def flat(self, model) -> dict:
        return dict(zip(self.names, jax.tree.leaves(nnx.state(model, nnx.Param))))

    def model(self, flat: dict):
        return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, [flat[n] for n in self.names]))

    def check(self, flat: dict) -> None:
        missing = sorted(set(self.names) - set(flat))
        unexpected = sorted(set(flat) - set(self.names))
        if missing or unexpected:
            raise ValueError(f"parameters do not fit the model: missing {missing}, unexpected {unexpected}")
        for name in self.names:
            if tuple(np.shape(flat[name])) != self.shapes[name]:
                raise ValueError(f"parameter {name}: shape {tuple(np.shape(flat[name]))}, expected {self.shapes[name]}")


def flat_params(model) -> dict:
    """{"blocks/0/tmix/key/kernel": array, ...} for every nnx.Param."""
    return ParamCodec(model).flat(model)


def model_from_flat_params(config: ModelConfig, flat: dict):
    """Build a model of `config` whose parameters are `flat` (names and shapes must match exactly)."""
    codec = ParamCodec(abstract_model(config))
    codec.check(flat)
    return codec.model({n: jnp.asarray(flat[n], jnp.float32) for n in codec.names})


def save_model_dir(out_dir, model, meta: dict, force: bool = False, extra: dict | None = None) -> pathlib.Path:
    """Write `model`'s parameters and `meta` (must include "model": config dict) to `out_dir`;
    `extra` maps further item names to flat {name: array} dicts saved beside the parameters."""
    out_dir = pathlib.Path(out_dir).absolute()
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir} exists (use --force to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(tmp / PARAMS_DIR, {k: np.asarray(v) for k, v in flat_params(model).items()})
        checkpointer.wait_until_finished()
        for item, arrays in (extra or {}).items():
            checkpointer.save(tmp / item, arrays)
            checkpointer.wait_until_finished()
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    finally:
        checkpointer.close()          # joins orbax's background writers before any clean-up
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def is_model_dir(path) -> bool:
    path = pathlib.Path(path)
    return (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def restore_model_dir(path):
    """Returns (model, config, meta) from a directory written by `save_model_dir`."""
    path = pathlib.Path(path).absolute()
    meta = json.loads((path / CONFIG_FILE).read_text())
    config = ModelConfig.from_dict(meta["model"])
    flat = ocp.StandardCheckpointer().restore(path / PARAMS_DIR)
    return model_from_flat_params(config, flat), config, meta


def load_model(path, dtype: str | None = None):
    """Load a model from a converted checkpoint directory, a training run directory, or a
    published PyTorch `.pth` file. Returns (model, config); `dtype` overrides the compute dtype."""
    path = pathlib.Path(path)
    if path.is_file():
        from microrwkv_jax.convert import convert_torch_file
        model, config, _ = convert_torch_file(path)
    elif is_model_dir(path):
        model, config, _ = restore_model_dir(path)
    elif path.is_dir():                     # a training run directory: its newest checkpoint
        from microrwkv_jax.train_lib import restore_run_params
        flat, meta = restore_run_params(path)
        config = ModelConfig.from_dict(meta["model"])
        model = model_from_flat_params(config, flat)
    else:
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    if dtype is not None and dtype != config.dtype:
        config = config.replace(dtype=dtype)
        model = model_from_flat_params(config, flat_params(model))
    return model, config


def checkpoint_tokenizer_name(path) -> str:
    """The tokenizer a checkpoint was trained with (published .pth files use GPT-2)."""
    path = pathlib.Path(path)
    if is_model_dir(path):
        return json.loads((path / CONFIG_FILE).read_text()).get("tokenizer", "gpt2")
    if path.is_dir():
        from microrwkv_jax.train_lib import read_run_meta
        return read_run_meta(path).get("tokenizer", "gpt2")
    return "gpt2"


def load_model_and_tokenizer(path, dtype: str | None = None):
    """(model, config, tokenizer) of any checkpoint `load_model` reads."""
    from microrwkv_jax.data.tokenizers import get_tokenizer
    model, config = load_model(path, dtype=dtype)
    tokenizer = get_tokenizer(checkpoint_tokenizer_name(path))
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{path}: the model's vocabulary ({config.vocab_size}) is smaller than its "
                         f"{tokenizer.name} tokenizer's ({tokenizer.vocab_size})")
    return model, config, tokenizer
