"""What several test modules share: paths, the error measure, small configs, the GPT-2 BPE file."""

import importlib.util
import os
import pathlib

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
# The GPT-2 BPE ranks (tiktoken's r50k_base file) cannot be downloaded here: tests that need them
# read the file this variable names, and skip, saying so, when it is unset or absent.
GPT2_BPE_VARIABLE = "MICRORWKV_GPT2_BPE"


def gpt2_bpe_path():
    """The GPT-2 BPE file named by $MICRORWKV_GPT2_BPE, or None."""
    path = os.environ.get(GPT2_BPE_VARIABLE)
    return pathlib.Path(path) if path and pathlib.Path(path).is_file() else None


def rel_err(a, b) -> float:
    """Relative L2 error of a against the reference b, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def tiny_config(family="hybrid", **overrides):
    """A small config of a causal preset ("hybrid", "rwkv", "gpt")."""
    from microrwkv_jax import model_config
    base = dict(vocab_size=97, block_size=32, n_layer=2, n_embd=32, n_head=4, swa_window=8,
                num_experts=4, num_active_experts=2, expert_dim=16, chunk_size=8)
    base.update(overrides)
    return model_config(family, **base)


def randomize_params(module, seed: int, scale: float = 0.1):
    """Add scale x N(0, 1) noise to every parameter of an nnx module in place, so that no
    parameter starts at zero (RWKV-7's output projection does) and every path is exercised."""
    import jax
    from flax import nnx
    params = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [leaf + scale * jax.random.normal(key, leaf.shape, leaf.dtype) for leaf, key in zip(leaves, keys)]
    nnx.update(module, jax.tree.unflatten(treedef, noisy))
    return module


def load_script(name: str):
    """A top-level script of the repository (sample.py, convert_torch_ckpt.py) as a module."""
    spec = importlib.util.spec_from_file_location(pathlib.Path(name).stem + "_script", REPO / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flip_bytes(directory, count: int = 16) -> pathlib.Path:
    """Silent bit rot: invert `count` bytes in the middle of the largest data file under `directory`."""
    path = max((p for p in pathlib.Path(directory).rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
    path.write_bytes(bytes(data))
    return path


def make_tokenizer_json(path, vocab_size: int = 320) -> pathlib.Path:
    """A small byte-level BPE `tokenizer.json` trained on built-in stories, with <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from microrwkv_jax.data.stories import generate_stories
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(generate_stories(200, 3)[0], trainer)
    tokenizer.save(str(path))
    return pathlib.Path(path)
