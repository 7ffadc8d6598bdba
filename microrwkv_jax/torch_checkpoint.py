"""Read `torch.save` zip archives without importing torch, and without running their code.

A torch checkpoint is a zip archive holding `<name>/data.pkl` (a pickle) and one file per
tensor storage (`<name>/data/<key>`). Unpickling normally imports and calls whatever the
pickle names, so a malicious file can run anything. `load_torch_checkpoint` uses a restricted
unpickler that admits only the tensor-rebuild functions, the storage types, OrderedDict and
plain values; anything else raises `UnsafeCheckpointError` before it is called. Sizes are
checked before anything is read: each storage's size in the archive's directory against what the
pickle says it holds, and each tensor's view (offset, sizes, strides) against its storage.
Tensors come back as numpy arrays (bfloat16 as `ml_dtypes.bfloat16`), bit for bit the values
torch stores.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import zipfile
import zlib

import ml_dtypes
import numpy as np


class CheckpointFormatError(ValueError):
    """The file is not a readable torch checkpoint (missing, truncated, corrupt)."""


class UnsafeCheckpointError(CheckpointFormatError):
    """The pickle names something outside the admitted set; nothing of it was run."""


class ConversionError(ValueError):
    """The checkpoint is readable but is not a model of a family that can convert it."""


def check_state_dict(state_dict: dict, expected: dict, model: str) -> None:
    """Refuse, in one line, a state dict whose names or shapes differ from `expected` {name: shape}."""
    missing = [n for n in expected if n not in state_dict]
    unexpected = sorted(n for n in state_dict if n not in expected)
    misshaped = [f"{n} {tuple(np.shape(state_dict[n]))} (expected {expected[n]})"
                 for n in expected if n in state_dict and tuple(np.shape(state_dict[n])) != expected[n]]
    if missing or unexpected or misshaped:
        parts = [f"{label}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''} ({len(items)})"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                 if items]
        raise ConversionError(f"state dict does not match {model}: " + "; ".join(parts))


def tensor_reader(tensor, transform=None, pad_rows: int = 0):
    """A function of no arguments that reads `tensor` (a LazyTensor or an array) in its stored dtype,
    applies `transform` and zero-pads its first axis by `pad_rows` rows: one parameter of a family's
    converted checkpoint, read only when the loader gets to it (see `checkpoints.materialise_params`)."""
    def read() -> np.ndarray:
        value = np.asarray(tensor)
        if transform is not None:
            value = transform(value)
        if pad_rows:
            value = np.pad(value, ((0, pad_rows),) + ((0, 0),) * (value.ndim - 1))
        return np.ascontiguousarray(value)
    return read


STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class LazyTensor:
    """A tensor of a checkpoint file whose shape and dtype are known and checked, and whose values
    are read only by `read()` (or `np.asarray`). Subclasses implement `read`."""

    shape: tuple
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self) -> np.ndarray:
        raise NotImplementedError

    def __array__(self, dtype=None, copy=None):
        value = self.read()
        return value if dtype is None else value.astype(dtype)

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


def read_tensors(value, depth: int = 0):
    """`value` (a checkpoint's nested dicts, lists and tensors) with every LazyTensor read."""
    if depth > 100:
        raise CheckpointFormatError("checkpoint nested more than 100 levels deep")
    if isinstance(value, LazyTensor):
        return value.read()
    if isinstance(value, dict):
        items = [(k, read_tensors(v, depth + 1)) for k, v in value.items()]
        return type(value)(items) if isinstance(value, collections.OrderedDict) else dict(items)
    if isinstance(value, (list, tuple)):
        return type(value)(read_tensors(v, depth + 1) for v in value)
    return value


class _StorageType:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


# Deflate cannot expand data more than about 1032:1; a member claiming more lies about its size.
MAX_DEFLATE_RATIO = 1100


class _Archive:
    """The zip archive the storages of one checkpoint read from: opened on the first read and kept
    open while any of its tensors lives (a file handle, not its contents)."""

    def __init__(self, path: str):
        self.path, self._zip = path, None

    def read(self, member: str, expected: int, start: int, length: int) -> bytes:
        """`length` bytes from `start` of `member`, whose size must still be `expected`."""
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        if self._zip.getinfo(member).file_size != expected:
            raise CheckpointFormatError(f"{self.path}: {member} changed size since it was opened")
        if start == 0 and length == expected:
            return self._zip.read(member)          # whole: its CRC is checked too
        with self._zip.open(member) as f:
            f.seek(start)
            return f.read(length)

    def __del__(self):
        if self._zip is not None:
            self._zip.close()


class _Storage:
    """A storage of the archive: its member, dtype and element count, already checked against the
    archive's directory. `read()` reads the member."""

    def __init__(self, archive: _Archive, member: str, dtype: np.dtype, numel: int):
        self.archive, self.path, self.member, self.dtype, self.size = archive, archive.path, member, dtype, numel

    def read(self, first: int, count: int) -> np.ndarray:
        """Elements [first, first + count) of the storage: only the bytes a tensor's view spans are
        read, so many tensors viewing one large storage never read it whole, each."""
        itemsize, expected = self.dtype.itemsize, self.size * self.dtype.itemsize
        try:
            raw = self.archive.read(self.member, expected, first * itemsize, count * itemsize)
        except (OSError, KeyError, zipfile.BadZipFile, EOFError, zlib.error) as err:
            raise CheckpointFormatError(f"{self.path}: cannot read {self.member} ({type(err).__name__}: {err})") from None
        if len(raw) != count * itemsize:
            raise CheckpointFormatError(f"{self.path}: {self.member} is shorter than the {expected} bytes it declares")
        return np.frombuffer(raw, dtype=self.dtype, count=count)


class _TensorView:
    """A tensor as the pickle describes it: a view (offset, sizes, strides) of a storage. Nothing is
    read through it: `_check_view` turns it into a `TorchTensor` once it fits its storage."""

    def __init__(self, storage, storage_offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, storage_offset, size, stride


class TorchTensor(LazyTensor):
    """A tensor of a torch archive, its view checked to lie inside its storage; read on demand."""

    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride
        self.dtype = storage.dtype

    def read(self) -> np.ndarray:
        if math.prod(self.shape) == 0:
            return np.zeros(self.shape, self.dtype)
        span = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))   # checked inside the storage
        elements = self.storage.read(self.offset, span)
        if not self.shape:
            return elements[0].copy()
        itemsize = elements.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(elements, shape=self.shape,
                                               strides=tuple(s * itemsize for s in self.stride), writeable=False)
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _TensorView(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_view(view: _TensorView, name: str) -> TorchTensor:
    """The tensor a view describes, after checking, in exact integer arithmetic, that every element
    it reads lies inside its storage; refuses negative strides and views larger than their storage."""
    storage, offset, size, stride = view.storage, view.offset, view.size, view.stride
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(f"tensor {name}: its storage is not a storage")
    if not (_is_int(offset) and isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
            and all(map(_is_int, size)) and all(map(_is_int, stride)) and len(size) == len(stride)):
        raise CheckpointFormatError(f"tensor {name}: malformed view (offset {offset!r:.40}, size {size!r:.60}, "
                                    f"stride {stride!r:.60})")
    numel = math.prod(size)
    if offset < 0 or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise CheckpointFormatError(f"tensor {name}: negative offset, size or stride (offset {offset}, "
                                    f"size {tuple(size)}, stride {tuple(stride)})")
    if numel > 0:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))      # Python ints: no overflow
        if last >= storage.size or numel > storage.size:
            raise CheckpointFormatError(f"tensor {name}: view (offset {offset}, size {tuple(size)}, stride "
                                        f"{tuple(stride)}) reaches outside its storage of {storage.size} elements")
    return TorchTensor(storage, offset, tuple(size), tuple(stride))


def _check_all(value, name: str = "", depth: int = 0):
    """`value` with every tensor view checked and turned into a TorchTensor, named by its path."""
    if depth > 100:
        raise CheckpointFormatError(f"{name or 'checkpoint'}: nested more than 100 levels deep")
    if isinstance(value, _TensorView):
        return _check_view(value, name or "<root>")
    if isinstance(value, dict):
        items = [(k, _check_all(v, f"{name}/{k}" if name else str(k), depth + 1)) for k, v in value.items()]
        return type(value)(items) if isinstance(value, collections.OrderedDict) else dict(items)
    if isinstance(value, (list, tuple)):
        items = [_check_all(v, f"{name}[{i}]", depth + 1) for i, v in enumerate(value)]
        return type(value)(items)
    return value


ADMITTED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix, self.storages = archive, prefix, {}
        self.reader = _Archive(path)          # what the tensors read from, later

    def find_class(self, module, name):
        try:
            return ADMITTED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(f"refused to load {module}.{name}: a torch checkpoint holds only "
                                        "tensors, OrderedDicts and plain values") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and _is_int(pid[4]) and pid[4] >= 0):
            raise UnsafeCheckpointError(f"refused persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if key not in self.storages:
            member = f"{self.prefix}data/{key}"
            try:
                info = self.archive.getinfo(member)
            except KeyError:
                raise CheckpointFormatError(f"storage {key}: no member {member} in the archive") from None
            expected = numel * storage_type.dtype.itemsize
            # Sizes first, from the archive's directory: nothing is inflated that the pickle does not account for.
            if info.file_size != expected:
                raise CheckpointFormatError(f"storage {key}: the archive declares {info.file_size} bytes, the "
                                            f"pickle {numel} x {storage_type.dtype.itemsize} = {expected}")
            if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
                raise CheckpointFormatError(f"storage {key}: {info.compress_size} compressed bytes cannot hold "
                                            f"the {info.file_size} it declares")
            self.storages[key] = _Storage(self.reader, member, storage_type.dtype, numel)
        return self.storages[key]


def load_torch_checkpoint(path) -> dict:
    """Read a `torch.save` zip archive into plain Python values and numpy arrays.

    Raises CheckpointFormatError (FileNotFoundError for a missing file) with a one-line message.
    """
    return read_tensors(open_torch_checkpoint(path))


def open_torch_checkpoint(path) -> dict:
    """Read a `torch.save` zip archive's structure: plain Python values, with each tensor a
    `TorchTensor` (checked against its storage; read on demand). Errors as `load_torch_checkpoint`."""
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
                return _check_all(_RestrictedUnpickler(f, os.path.abspath(path), archive, prefix).load())
        except UnsafeCheckpointError:
            raise
        except CheckpointFormatError as err:       # name the file, once
            raise CheckpointFormatError(str(err) if str(err).startswith(f"{path}: ") else f"{path}: {err}") from None
        except (pickle.UnpicklingError, EOFError, KeyError, zipfile.BadZipFile, ValueError, TypeError,
                IndexError, OSError) as err:
            raise CheckpointFormatError(f"{path}: corrupt torch checkpoint ({type(err).__name__}: {err})") from None
