"""Read `torch.save` zip archives without importing torch, and without running their code.

A torch checkpoint is a zip archive holding `<name>/data.pkl` (a pickle) and one file per
tensor storage (`<name>/data/<key>`). Unpickling normally imports and calls whatever the
pickle names, so a malicious file can run anything. `load_torch_checkpoint` uses a restricted
unpickler that admits only the tensor-rebuild functions, the storage types, OrderedDict and
plain values; anything else raises `UnsafeCheckpointError` before it is called. Tensors come
back as numpy arrays (bfloat16 as `ml_dtypes.bfloat16`), bit for bit the values torch stores.
"""

from __future__ import annotations

import collections
import pickle
import zipfile

import ml_dtypes
import numpy as np


class CheckpointFormatError(ValueError):
    """The file is not a readable torch checkpoint (missing, truncated, corrupt)."""


class UnsafeCheckpointError(CheckpointFormatError):
    """The pickle names something outside the admitted set; nothing of it was run."""


class ConversionError(ValueError):
    """The checkpoint is readable but is not a model of a family that can convert it."""


STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if len(size) == 0:
        return storage[storage_offset].copy()
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride), writeable=False)
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


ADMITTED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module, name):
        try:
            return ADMITTED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(f"refused to load {module}.{name}: a torch checkpoint holds only "
                                        "tensors, OrderedDicts and plain values") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafeCheckpointError(f"refused persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            expected = numel * storage_type.dtype.itemsize
            if len(raw) < expected:
                raise CheckpointFormatError(f"storage {key} holds {len(raw)} bytes, expected {expected}")
            self.storages[key] = np.frombuffer(raw, dtype=storage_type.dtype, count=numel)
        return self.storages[key]


def load_torch_checkpoint(path) -> dict:
    """Read a `torch.save` zip archive into plain Python values and numpy arrays.

    Raises CheckpointFormatError (FileNotFoundError for a missing file) with a one-line message.
    """
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointFormatError(f"{path}: not a torch zip checkpoint ({err})") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(f"{path}: not a torch zip checkpoint (no data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise CheckpointFormatError(f"{path}: big-endian checkpoints are not supported")
        try:
            with archive.open(pickles[0]) as f:
                return _RestrictedUnpickler(f, archive, prefix).load()
        except CheckpointFormatError:
            raise
        except (pickle.UnpicklingError, EOFError, KeyError, zipfile.BadZipFile, ValueError, TypeError,
                IndexError, OSError) as err:
            raise CheckpointFormatError(f"{path}: corrupt torch checkpoint ({type(err).__name__}: {err})") from None
