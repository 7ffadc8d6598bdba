"""The torch-free `.pth` reader: bit-for-bit what torch.load reads; malicious pickles refused, never run."""

import os
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the test extra: pip install -e '.[test]'")

from microrwkv_jax.torch_checkpoint import UnsafeCheckpointError, load_torch_checkpoint  # noqa: E402
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


