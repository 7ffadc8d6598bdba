"""Loading pretrained checkpoints tensor by tensor: nothing is read before it is needed, one tensor
is in flight at a time, parameters can stay in the checkpoint's bf16, and the peak memory of a
whole load stays near one copy of the weights."""

import gc
import json
import os
import subprocess
import sys
import weakref
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the test extra: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is the test extra: pip install -e '.[test]'")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from microrwkv_jax import load_model  # noqa: E402
from microrwkv_jax.checkpoints import ParamCodec, materialise_params  # noqa: E402
from microrwkv_jax.families import abstract_model, model_config  # noqa: E402
from microrwkv_jax.hf_checkpoint import SafetensorsTensor, read_hf_dir  # noqa: E402
from microrwkv_jax.torch_checkpoint import LazyTensor, load_torch_checkpoint, open_torch_checkpoint  # noqa: E402
from tests.families.test_rwkv4 import blinkdl_state_dict, hf_model, jax_logits, tokens  # noqa: E402
from tests.helpers import REPO, rel_err  # noqa: E402


@pytest.fixture(scope="module")
def bf16_pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("pth") / "RWKV-4-tiny-bf16.pth"
    torch.save(blinkdl_state_dict(hf_model(), torch.bfloat16), path)
    return path


def test_opening_a_pth_reads_no_tensor_and_reading_one_reads_only_its_storage(bf16_pth, monkeypatch):
    reads, read = [], zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, name, *a: reads.append(name) or read(self, name, *a))
    ckpt = open_torch_checkpoint(bf16_pth)
    assert not any("/data/" in name for name in reads)
    tensor = ckpt["blocks.1.att.key.weight"]
    assert isinstance(tensor, LazyTensor) and tensor.shape == (32, 32) and str(tensor.dtype) == "bfloat16"
    value = tensor.read()
    assert [name for name in reads if "/data/" in name] == [f"{bf16_pth.stem}/data/{tensor.storage.member.split('/')[-1]}"]
    ref = torch.load(bf16_pth)["blocks.1.att.key.weight"]
    np.testing.assert_array_equal(value.view(np.int16), ref.view(torch.int16).numpy())
    np.testing.assert_array_equal(value.view(np.int16), load_torch_checkpoint(bf16_pth)["blocks.1.att.key.weight"].view(np.int16))


def test_a_safetensors_directory_opens_lazily_with_each_tensor_as_stored(tmp_path):
    model = hf_model().to(torch.bfloat16)
    model.save_pretrained(tmp_path / "hf")
    _, state_dict = read_hf_dir(tmp_path / "hf")
    reference = model.state_dict()
    assert all(isinstance(t, SafetensorsTensor) for t in state_dict.values())
    for name, tensor in state_dict.items():
        assert tensor.shape == tuple(reference[name].shape) and str(tensor.dtype) == "bfloat16"
        np.testing.assert_array_equal(tensor.read().view(np.int16), reference[name].view(torch.int16).numpy())


def test_parameters_are_read_one_at_a_time_each_converted_before_the_next_is_read():
    config = model_config("rwkv4", n_layer=1, n_embd=32, vocab_size=97)
    shapes = ParamCodec(abstract_model(config)).shapes
    previous, order = [], []

    def reader(name):
        def read():
            # The array handed over for the previous parameter is gone: converted and dropped.
            gc.collect()
            assert not previous or previous[-1]() is None, f"{name} read while the previous tensor is alive"
            value = np.full(shapes[name], 0.5, np.float32)
            previous.append(weakref.ref(value))
            order.append(name)
            return value
        return read

    readers = {name: reader(name) for name in shapes}
    params = materialise_params(config, readers, "bfloat16")
    assert order == list(ParamCodec(abstract_model(config)).names) and readers == {}
    assert all(p.dtype == jnp.bfloat16 for p in params.values())


def test_a_non_finite_or_misshapen_tensor_is_named():
    config = model_config("rwkv4", n_layer=1, n_embd=32, vocab_size=97)
    shapes = ParamCodec(abstract_model(config)).shapes
    params = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    params["blocks/0/att/time_decay"] = np.array([np.nan] * 32, np.float32)
    with pytest.raises(ValueError) as err:
        materialise_params(config, dict(params), where="x.pth")
    assert str(err.value) == "x.pth: parameter blocks/0/att/time_decay holds non-finite values"
    params["blocks/0/att/time_decay"] = np.zeros(31, np.float32)
    with pytest.raises(ValueError) as err:
        materialise_params(config, dict(params), where="x.pth")
    assert str(err.value) == "x.pth: parameter blocks/0/att/time_decay: shape (31,), expected (32,)"


def test_bf16_parameters_hold_the_checkpoint_bits_and_give_the_float32_logits(bf16_pth):
    model16, _ = load_model(bf16_pth, param_dtype="bfloat16")
    model32, _ = load_model(bf16_pth)
    stored = torch.load(bf16_pth)
    key = np.asarray(model16.blocks[1].att.key.kernel[...])
    assert key.dtype == jnp.bfloat16
    np.testing.assert_array_equal(key.view(np.int16), stored["blocks.1.att.key.weight"].T.contiguous().view(torch.int16).numpy())
    idx = tokens(3, 2, 24)
    assert rel_err(jax_logits(model16, idx), jax_logits(model32, idx)) <= 1e-6
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree_util.tree_leaves(nnx.state(model16, nnx.Param)))


@pytest.mark.slow
@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_loading_a_bf16_checkpoint_peaks_near_one_copy_of_its_parameters(tmp_path_factory, param_dtype):
    """117M parameters (8 x 1024 wide, a 4096-token vocabulary), 235 MB of bf16 on disk. Reading the
    whole file and then converting it would hold 1.5 copies of the float32 parameters (2 of bf16)."""
    path = tmp_path_factory.getbasetemp() / "rwkv4-117m-bf16.pth"
    if not path.exists():
        from microrwkv_jax.families.rwkv4.checkpoint_names import parameter_map, rwkv4_config
        rng = np.random.default_rng(0)
        config = rwkv4_config(4096, 1024, 8, 4096)
        torch.save({blink: torch.from_numpy(rng.standard_normal(shape, np.float32) * 0.02).to(torch.bfloat16)
                    for _, blink, shape, _, _ in parameter_map(config)}, path)
    from benchmarks.load import CHILD        # the measurement `bench.py load` makes
    # glibc keeps freed heap blocks of up to 32 MB for reuse, which would blur the count of our own
    # copies by up to ~30%: give every allocation over 1 MB its own mapping, returned when freed.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2 ** 20)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), f"ours-{param_dtype}"], capture_output=True,
                          text=True, cwd=REPO, env=env, check=True)
    peak = json.loads(done.stdout.strip().splitlines()[-1])
    assert peak["param_bytes"] == 117_534_720 * (4 if param_dtype == "float32" else 2)
    # One copy of the parameters plus the tensors in flight (the largest is 8 MB of bf16).
    assert peak["param_bytes"] <= peak["load_peak_bytes"] <= 1.15 * peak["param_bytes"] + 32 * 2 ** 20, peak
    assert peak["eval_peak_bytes"] <= 1.15 * peak["param_bytes"] + 128 * 2 ** 20, peak
