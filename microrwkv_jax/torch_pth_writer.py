"""Write a state dict {name: numpy array} as a PyTorch `.pth` file (torch.save's zip format),
without importing torch: what BlinkDL's `rwkv` package and `torch.load(weights_only=True)` read.

The archive holds `data.pkl`, a protocol-2 pickle of an OrderedDict whose values are
`torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())`, each storage
a persistent id ("storage", torch.<Dtype>Storage, key, "cpu", numel) naming the raw little-endian
bytes in `data/<key>`, and `version`. The pickle is written opcode by opcode (no object of ours is
pickled), and the file is written beside its destination and renamed into place: a failure
leaves no half-written `.pth`.
"""

from __future__ import annotations

import os
import pathlib
import struct
import zipfile

import numpy as np

STORAGES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
            np.dtype(np.float64): "DoubleStorage", np.dtype(np.int64): "LongStorage",
            np.dtype(np.int32): "IntStorage"}


def _unicode(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data                      # BINUNICODE


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)                                  # BININT


def _ints_tuple(values) -> bytes:
    return b"(" + b"".join(_int(int(v)) for v in values) + b"t"            # MARK ... TUPLE


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()                            # GLOBAL


def _ordered_dict() -> bytes:
    return _global("collections", "OrderedDict") + b")R"                   # EMPTY_TUPLE REDUCE


def state_dict_pickle(tensors: dict, storage_names: dict) -> bytes:
    """The data.pkl bytes of {name: array}; storage_names {name: (key, Storage class name)}."""
    out = [b"\x80\x02", _ordered_dict(), b"("]                             # PROTO 2, the dict, MARK
    for name, array in tensors.items():
        key, storage = storage_names[name]
        strides = [int(np.prod(array.shape[i + 1:])) for i in range(array.ndim)]
        out += [_unicode(name), _global("torch._utils", "_rebuild_tensor_v2"), b"(",
                b"(" + _unicode("storage") + _global("torch", storage) + _unicode(key) + _unicode("cpu")
                + _int(array.size) + b"tQ",                                # the storage's persistent id
                _int(0), _ints_tuple(array.shape), _ints_tuple(strides), b"\x89",   # offset, size, stride, False
                _ordered_dict(), b"tR"]                                     # backward hooks; TUPLE REDUCE
    out.append(b"u.")                                                       # SETITEMS STOP
    return b"".join(out)


def write_pth(path, tensors: dict, archive_name: str = "archive") -> pathlib.Path:
    """Write {name: numpy array (float32, float16, float64, int64 or int32)} to `path` as torch.save would."""
    path = pathlib.Path(path)
    arrays = {name: np.asarray(a, order="C") for name, a in tensors.items()}     # (ascontiguousarray makes 0-d 1-d)
    names = {}
    for i, (name, a) in enumerate(arrays.items()):
        if a.dtype not in STORAGES:
            raise ValueError(f"{name}: dtype {a.dtype} cannot be written to a .pth")
        names[name] = (str(i), STORAGES[a.dtype])
    partial = path.with_name(f".{path.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr(f"{archive_name}/data.pkl", state_dict_pickle(arrays, names))
            archive.writestr(f"{archive_name}/byteorder", "little")
            for name, a in arrays.items():
                archive.writestr(f"{archive_name}/data/{names[name][0]}", a.astype(a.dtype.newbyteorder("<")).tobytes())
            archive.writestr(f"{archive_name}/version", "3\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
