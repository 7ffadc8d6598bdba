"""Read a Hugging Face model directory without torch: `config.json` and its weights, from
`model.safetensors` (through the `safetensors` library) or `pytorch_model.bin` (through the safe
torch reader), sharded ones through their `*.index.json`. Every tensor comes back as a
`LazyTensor`, read only when the family's converter asks for it. The family named by config.json's
`model_type` maps the state dict onto its parameters (`Family.hf_checkpoint`)."""

from __future__ import annotations

import json
import pathlib

import ml_dtypes
import numpy as np
import safetensors

from microrwkv_jax.torch_checkpoint import CheckpointFormatError, LazyTensor, open_torch_checkpoint

CONFIG_FILE = "config.json"
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def is_hf_dir(path) -> bool:
    path = pathlib.Path(path)
    return (path / CONFIG_FILE).is_file() and any((path / name).is_file() for name in WEIGHT_FILES)


def _unreadable(path, err: BaseException) -> CheckpointFormatError:
    text = str(err).splitlines()[0][:160] if str(err) else ""
    return CheckpointFormatError(f"{path}: unreadable safetensors file ({type(err).__name__}: {text})")


class SafetensorsTensor(LazyTensor):
    """A tensor of a `.safetensors` file (whose header the library has checked); read on demand."""

    def __init__(self, path: str, name: str, shape: tuple, dtype: np.dtype):
        self.path, self.name, self.shape, self.dtype = path, name, shape, dtype

    def read(self) -> np.ndarray:
        try:
            with safetensors.safe_open(self.path, framework="numpy") as f:
                value = f.get_tensor(self.name)
        except Exception as err:     # the safetensors library raises its own error types
            raise _unreadable(self.path, err) from None
        if value.shape != self.shape or value.dtype != self.dtype:
            raise CheckpointFormatError(f"{self.path}: {self.name} changed since the file was opened")
        return value


def _open_safetensors(path: pathlib.Path) -> dict:
    """{name: SafetensorsTensor} of a `.safetensors` file: its header only is read (and checked by
    the library against the file's size)."""
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            state_dict = {}
            for name in f.keys():
                tensor = f.get_slice(name)
                dtype = _DTYPES.get(tensor.get_dtype())
                if dtype is None:
                    raise CheckpointFormatError(f"{path}: {name} has dtype {tensor.get_dtype()}, which is not supported")
                state_dict[name] = SafetensorsTensor(str(path.absolute()), name, tuple(tensor.get_shape()), np.dtype(dtype))
            return state_dict
    except CheckpointFormatError:
        raise
    except Exception as err:     # the safetensors library raises its own error types
        raise _unreadable(path, err) from None


def _read_weight_file(path: pathlib.Path) -> dict:
    if path.suffix == ".safetensors":
        return _open_safetensors(path)
    state_dict = open_torch_checkpoint(path)
    if not isinstance(state_dict, dict):
        raise CheckpointFormatError(f"{path}: holds no state dict")
    return state_dict


def read_hf_dir(path):
    """(config.json as a dict, the state dict {name: LazyTensor}) of a Hugging Face model directory."""
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
