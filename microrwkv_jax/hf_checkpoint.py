"""Read a Hugging Face model directory without torch: `config.json` and its weights, from
`model.safetensors` (through the `safetensors` library) or `pytorch_model.bin` (through the safe
torch reader), sharded ones through their `*.index.json`. The family named by config.json's
`model_type` maps the state dict onto its parameters (`Family.hf_checkpoint`)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import safetensors.flax

from microrwkv_jax.torch_checkpoint import CheckpointFormatError, load_torch_checkpoint

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def is_hf_dir(path) -> bool:
    path = pathlib.Path(path)
    return (path / CONFIG_FILE).is_file() and any((path / name).is_file() for name in WEIGHT_FILES)


def _read_weight_file(path: pathlib.Path) -> dict:
    if path.suffix == ".safetensors":
        try:
            return {k: np.asarray(v) for k, v in safetensors.flax.load_file(str(path)).items()}
        except Exception as err:     # the safetensors library raises its own error types
            raise CheckpointFormatError(f"{path}: unreadable safetensors file ({type(err).__name__}: "
                                        f"{str(err).splitlines()[0][:160] if str(err) else ''})") from None
    state_dict = load_torch_checkpoint(path)
    if not isinstance(state_dict, dict):
        raise CheckpointFormatError(f"{path}: holds no state dict")
    return state_dict


def read_hf_dir(path):
    """(config.json as a dict, the state dict {name: numpy array}) of a Hugging Face model directory."""
    path = pathlib.Path(path)
    try:
        hf_config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointFormatError(f"{path / CONFIG_FILE}: unreadable ({err})") from None
    if not isinstance(hf_config, dict):
        raise CheckpointFormatError(f"{path / CONFIG_FILE}: not a JSON object")
    for name in WEIGHT_FILES:
        if not (path / name).is_file():
            continue
        if not name.endswith(".index.json"):
            return hf_config, _read_weight_file(path / name)
        try:
            weight_map = json.loads((path / name).read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointFormatError(f"{path / name}: not a weight index ({err})") from None
        state_dict = {}
        for shard in shards:        # the index is untrusted: shards must be plain files of this directory
            if not isinstance(shard, str) or pathlib.Path(shard).name != shard or not (path / shard).is_file():
                raise CheckpointFormatError(f"{path / name}: shard {shard!r} is not a file of {path}")
            state_dict.update(_read_weight_file(path / shard))
        missing = sorted(set(weight_map) - set(state_dict))
        if missing:
            raise CheckpointFormatError(f"{path / name}: the shards lack {missing[:4]}")
        return hf_config, state_dict
    raise CheckpointFormatError(f"{path}: no weights ({', '.join(WEIGHT_FILES)})")
