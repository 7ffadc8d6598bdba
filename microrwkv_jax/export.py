"""Our models -> BlinkDL's `.pth` layout (the reverse of `convert`): a model trained or fine-tuned
here, written as the state dict BlinkDL's `rwkv` package and RWKV-LM load. Each family's name
table (`parameter_map`: BlinkDL name, stored shape, our name, transform) is read backwards: a
transposed matrix is transposed back, a [C] vector becomes [1, 1, C], a time_state's key and
value axes are swapped back, the vocabulary's padding rows are dropped. A LoRA run's adapters
are merged on reading (`loading.read_params`). `convert_torch_ckpt.py --to pth` is its command line.
"""

from __future__ import annotations

import pathlib

import numpy as np

from microrwkv_jax.families import get_family
from microrwkv_jax.families.blinkdl import swap_key_value
from microrwkv_jax.loading import read_params
from microrwkv_jax.torch_checkpoint import ConversionError
from microrwkv_jax.torch_pth_writer import write_pth

BLINKDL_ARCHES = ("rwkv4", "rwkv5", "rwkv6", "rwkv7")



def export_to_pth(path, out=None, force: bool = False):
    """Write the model of `path` (a run directory's newest checkpoint or a model directory) as a
    BlinkDL `.pth` state dict, its family's name table read backwards (the vocabulary's padding
    rows dropped); returns (output path, summary lines). Families without a BlinkDL layout are
    refused in one line."""
    path = pathlib.Path(path)
    if path.is_file():
        raise ConversionError(f"{path}: --to pth exports a run or model directory, not a file")
    flat, config, _ = read_params(path)
    family = get_family(config.arch)
    names = family.torch_checkpoint
    if names is None or names.parameter_map is None or config.arch not in BLINKDL_ARCHES:
        raise ConversionError(f"--to pth: {family.describe(config)} ({config.arch}) has no BlinkDL .pth layout; "
                              f"exported are {', '.join(BLINKDL_ARCHES)}")
    out = pathlib.Path(out) if out is not None else path.with_name(path.name + ".pth")
    if out.exists() and not force:
        raise ConversionError(f"{out} exists: pass --force to replace it")
    tensors = {}
    for blink, stored_shape, ours, transform in names.parameter_map(config):
        value = flat[ours]
        array = np.asarray(value() if callable(value) else value, np.float32)   # (a reader or an array)
        if ours in ("emb/embedding", "head"):
            array = array[: config.vocab_size]
        array = (array.T if transform is np.transpose else swap_key_value(array) if transform is swap_key_value
                 else array.reshape(stored_shape))
        if array.shape != tuple(stored_shape):
            raise ConversionError(f"{ours}: shape {array.shape}, the layout wants {tuple(stored_shape)} for {blink}")
        tensors[blink] = array
    write_pth(out, tensors)
    return out, [f"exported {path} -> {out}",
                 f"  model: {family.describe(config)}: n_layer={config.n_layer} n_embd={config.n_embd} "
                 f"n_head={config.n_head} vocab_size={config.vocab_size}",
                 f"  tensors: {len(tensors)} in BlinkDL's layout, float32"]
