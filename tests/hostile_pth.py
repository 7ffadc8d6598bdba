"""Hand-written `torch.save` archives, as an attacker would write them (no torch needed): any
storage size, any view, any compression, so that the reader's checks can be tried one by one."""

import pickle
import zipfile

import numpy as np


def _literal(value) -> bytes:
    """The pickle opcodes that push `value` (an int, str or bool)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _tuple(values) -> bytes:
    return b"(" + b"".join(_literal(v) for v in values) + b"t"


def tensor_opcodes(key: str, numel: int, offset: int, size, stride, storage="FloatStorage") -> bytes:
    """torch._utils._rebuild_tensor_v2(storage `key` of `numel` elements, offset, size, stride, ...)."""
    pid = b"(" + _literal("storage") + b"ctorch\n" + storage.encode() + b"\n" + _literal(key) + _literal("cpu") \
        + _literal(numel) + b"tQ"
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + _literal(offset) + _tuple(size) + _tuple(stride)
            + b"\x89ccollections\nOrderedDict\n)RtR")


def write_pth(path, tensors: dict, storages: dict, compress: bool = False) -> None:
    """tensors: {name: (storage key, numel the pickle claims, offset, size, stride)};
    storages: {key: bytes}. Writes {"model": {name: tensor}} as torch.save's zip layout."""
    body = b"\x80\x02}" + _literal("model") + b"}"
    for name, (key, numel, offset, size, stride) in tensors.items():
        body += _literal(name) + tensor_opcodes(key, numel, offset, size, stride) + b"s"
    body += b"s."
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("archive/data.pkl", body)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)


def float_storage(n: int) -> bytes:
    return np.arange(n, dtype=np.float32).tobytes()
