"""The torch-free `.pth` reader: bit-for-bit what torch.load reads; malicious pickles refused, never run."""

import os
import pathlib
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the test extra: pip install -e '.[test]'")

from microrwkv_jax.torch_checkpoint import CheckpointFormatError, UnsafeCheckpointError, load_torch_checkpoint  # noqa: E402,E501
from tests.families.published_helpers import ARGS, torch_model  # noqa: E402
from tests.helpers import load_script  # noqa: E402
from torch_reference.published import save_published_checkpoint  # noqa: E402

convert_main = load_script("convert_torch_ckpt.py").main


def test_reader_is_bitwise_equal_to_torch_load(tmp_path):
    tm, args = torch_model(2)
    for dtype in (None, torch.bfloat16, torch.float16):
        path = tmp_path / f"ckpt-{dtype}.pth"
        save_published_checkpoint(path, tm, args, dtype=dtype)
        ours, ref = load_torch_checkpoint(path), torch.load(path, weights_only=False)
        assert ours.keys() == ref.keys() and ours["model_args"] == ref["model_args"] and ours["config"] == ref["config"]
        assert list(ours["model"]) == list(ref["model"])
        for name, tensor in ref["model"].items():
            mine = ours["model"][name]
            assert mine.shape == tuple(tensor.shape) and mine.dtype.itemsize == tensor.element_size()
            bits = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
            np.testing.assert_array_equal(mine.view(f"i{tensor.element_size()}"), tensor.view(bits).numpy())
        for pid, slots in ref["optimizer"]["state"].items():
            for key, value in slots.items():
                np.testing.assert_array_equal(ours["optimizer"]["state"][pid][key], value.numpy())
        assert ours["optimizer"]["param_groups"] == ref["optimizer"]["param_groups"]
        assert ours["iter_num"] == 500 and float(ours["best_val_loss"]) == 1.25


class _Payload:
    def __init__(self, call, marker):
        self.call, self.marker = call, marker

    def __reduce__(self):
        return self.call, (f"touch {self.marker}",) if self.call is os.system else (str(self.marker),)


@pytest.mark.parametrize("call", [os.system, print, pathlib.Path.touch])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, capsys, call):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": _Payload(call, marker)}, "model_args": ARGS}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"^refused to load "):
        load_torch_checkpoint(path)
    assert convert_main([str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("convert_torch_ckpt.py: error: refused to load ") and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "evil").exists()




# --- hostile archives, written by hand ------------------------------------------------------------

from tests.hostile_pth import float_storage, write_pth  # noqa: E402


def test_a_hand_written_archive_reads_as_torch_reads_it(tmp_path):
    path = tmp_path / "fine.pth"
    write_pth(path, {"w": ("0", 12, 2, (2, 3), (4, 1)), "s": ("0", 12, 11, (), ())}, {"0": float_storage(12)})
    ours = load_torch_checkpoint(path)["model"]
    np.testing.assert_array_equal(ours["w"], [[2, 3, 4], [6, 7, 8]])
    assert ours["s"] == 11
    ref = torch.load(path, weights_only=True)["model"]
    np.testing.assert_array_equal(ours["w"], ref["w"].numpy())


OUT_OF_BOUNDS = {    # name: (numel claimed, offset, size, stride, storage elements)
    "offset past the end": (12, 12, (1,), (1,), 12),
    "storage smaller than the view": (12, 0, (4, 4), (4, 1), 12),
    "negative stride": (12, 11, (3,), (-1,), 12),
    "stride of 2**40": (12, 0, (2,), (2 ** 40,), 12),
    "scalar past the end": (12, 99, (), (), 12),
    "size of 2**62 with stride 0": (12, 0, (2 ** 62,), (0,), 12),
}
# torch keeps views uncopied, so it accepts an expanded (stride 0) one; we copy every tensor out of
# its storage, so a view larger than its storage would be an allocation bomb: refused, stricter.
TORCH_ACCEPTS = {"size of 2**62 with stride 0"}


@pytest.mark.parametrize("case", sorted(OUT_OF_BOUNDS))
def test_views_outside_their_storage_are_refused_naming_the_tensor(tmp_path, case):
    numel, offset, size, stride, elements = OUT_OF_BOUNDS[case]
    path = tmp_path / "oob.pth"
    write_pth(path, {"transformer.wte.weight": ("0", numel, offset, size, stride)}, {"0": float_storage(elements)})
    with pytest.raises(CheckpointFormatError) as err:
        load_torch_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: tensor model/transformer.wte.weight: ") and "\n" not in message
    if case not in TORCH_ACCEPTS:
        with pytest.raises(Exception):           # the independent reference refuses it too
            torch.load(path, weights_only=True)


def test_a_storage_that_inflates_past_what_the_pickle_says_is_never_read(tmp_path, monkeypatch):
    path = tmp_path / "bomb.pth"
    write_pth(path, {"w": ("0", 4, 0, (4,), (1,))}, {"0": bytes(64 * 2 ** 20)}, compress=True)   # 64 MB of zeros
    assert path.stat().st_size < 2 ** 20
    reads, read = [], zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, name, *a: reads.append(name) or read(self, name, *a))
    with pytest.raises(CheckpointFormatError) as err:
        load_torch_checkpoint(path)
    assert str(err.value) == f"{path}: storage 0: the archive declares {64 * 2 ** 20} bytes, the pickle 4 x 4 = 16"
    assert not any(name.endswith("data/0") for name in reads)


def test_cli_refuses_an_out_of_bounds_view_with_one_line(tmp_path, capsys):
    path = tmp_path / "oob.pth"
    write_pth(path, {"w": ("0", 12, 0, (2,), (2 ** 40,))}, {"0": float_storage(12)})
    assert convert_main([str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"convert_torch_ckpt.py: error: {path}: tensor model/w: view") and err.count("\n") == 1
    assert not (tmp_path / "oob").exists()


def test_tensors_viewing_one_storage_read_only_their_own_span(tmp_path, monkeypatch):
    from microrwkv_jax import torch_checkpoint
    path = tmp_path / "shared.pth"
    write_pth(path, {"a": ("0", 4096, 10, (2, 3), (4, 1)), "b": ("0", 4096, 4000, (5,), (1,))},
              {"0": float_storage(4096)})
    spans, read = [], torch_checkpoint._Archive.read
    monkeypatch.setattr(torch_checkpoint._Archive, "read",
                        lambda self, member, expected, start, length: spans.append((start, length))
                        or read(self, member, expected, start, length))
    ours = load_torch_checkpoint(path)["model"]
    np.testing.assert_array_equal(ours["a"], [[10, 11, 12], [14, 15, 16]])
    np.testing.assert_array_equal(ours["b"], [4000, 4001, 4002, 4003, 4004])
    assert sorted(spans) == [(40, 28), (16000, 20)]          # bytes: (offset * 4, span * 4)
    ref = torch.load(path, weights_only=True)["model"]
    np.testing.assert_array_equal(ours["a"], ref["a"].numpy())
    np.testing.assert_array_equal(ours["b"], ref["b"].numpy())
