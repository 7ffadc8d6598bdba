"""The published architecture against the PyTorch reference; the torch-free reader; the converter."""

import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from microrwkv_jax import load_model
from microrwkv_jax.convert import main as convert_main
from microrwkv_jax.torch_checkpoint import UnsafeCheckpointError, load_torch_checkpoint
from tests.conftest import REPO, rel_err

torch = pytest.importorskip("torch", reason="torch is the test extra: pip install -e '.[test]'")
from tests.torch_reference import PublishedTorchModel, perturb_to_trained_scale, save_published_checkpoint  # noqa: E402

ARGS = dict(block_size=320, vocab_size=128, n_layer=2, n_head=2, n_embd=32, num_experts=4,
            num_active_experts=3, expert_dim=20, dim=32, dropout=0.0, bias=True)


def torch_model(seed=0, **overrides):
    torch.manual_seed(seed)
    args = {**ARGS, **overrides}
    return perturb_to_trained_scale(PublishedTorchModel(args), seed), args


def torch_logits(model, idx):
    with torch.no_grad():
        return model(torch.tensor(np.array(idx), dtype=torch.long)).numpy()


@nnx.jit
def jax_logits(model, idx):
    return model(idx)


def random_tokens(seed, b, t):
    return jnp.asarray(np.random.default_rng(seed).integers(0, ARGS["vocab_size"], (b, t)), jnp.int32)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tm, args = torch_model(0)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt-500.pth"
    save_published_checkpoint(path, tm, args, prefix="_orig_mod.")
    assert convert_main([str(path)]) == 0
    model, config = load_model(path.with_suffix(""))
    return tm, model, config, path


@pytest.mark.parametrize("b", [1, 2, 3])
@pytest.mark.parametrize("t", [1, 7, 128, 256, 300])
def test_logits_match_pytorch(converted, b, t):
    tm, model, _, _ = converted
    idx = random_tokens(100 * b + t, b, t)
    assert rel_err(jax_logits(model, idx), torch_logits(tm, idx)) <= 1e-5


def test_faults_are_reproduced(converted):
    """The compatibility model is not causal and mixes batch rows, exactly like PyTorch."""
    tm, model, _, _ = converted
    idx = random_tokens(1, 2, 40)
    future = idx.at[:, 20:].set(random_tokens(2, 2, 20))
    ours = rel_err(jax_logits(model, future)[:, :20], jax_logits(model, idx)[:, :20])
    theirs = rel_err(torch_logits(tm, future)[:, :20], torch_logits(tm, idx)[:, :20])
    assert ours > 1e-4 and abs(ours - theirs) <= 1e-4 * theirs + 1e-6
    other_row = idx.at[1].set(random_tokens(3, 1, 40)[0])
    assert rel_err(jax_logits(model, other_row)[0], jax_logits(model, idx)[0]) > 1e-4


@pytest.mark.parametrize("bias, prefix, dtype", [(False, "", None), (True, "module.", torch.bfloat16),
                                                 (False, "_orig_mod.", torch.float16)])
def test_checkpoint_variants_convert(tmp_path, bias, prefix, dtype):
    tm, args = torch_model(1, bias=bias)
    path = tmp_path / "ckpt.pth"
    save_published_checkpoint(path, tm, args, prefix=prefix, dtype=dtype)
    if dtype is not None:   # the reference runs with the same rounded weights, in float32
        with torch.no_grad():
            for p in tm.parameters():
                p.copy_(p.to(dtype).float())
    model, config = load_model(path)
    assert config.bias == bias and config.arch == "published"
    idx = random_tokens(5, 2, 33)
    assert rel_err(jax_logits(model, idx), torch_logits(tm, idx)) <= 1e-5


def test_greedy_decoding_matches_pytorch_generate(converted):
    tm, model, config, _ = converted
    prompt = random_tokens(9, 1, 5)
    expected = tm.generate(torch.tensor(np.array(prompt), dtype=torch.long), 32, top_k=1).numpy()
    from microrwkv_jax.sampling import generate
    ours = generate(model, np.asarray(prompt), max_new_tokens=32, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(ours), expected[:, 5:])


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


def _run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "convert_torch_ckpt.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


def test_cli_summary_and_exit_status(tmp_path):
    tm, args = torch_model(3)
    path = tmp_path / "ckpt-500.pth"
    save_published_checkpoint(path, tm, args)
    done = _run_cli(path, "--keep_optimizer")
    assert done.returncode == 0, done.stderr
    assert f"converted {path} -> {tmp_path / 'ckpt-500'}" in done.stdout
    assert "parameters: " in done.stdout and "optimizer state: kept" in done.stdout
    assert (tmp_path / "ckpt-500" / "torch_optimizer").is_dir()
    again = _run_cli(path)
    assert again.returncode == 1
    assert again.stderr == f"convert_torch_ckpt.py: error: {tmp_path / 'ckpt-500'} exists (use --force to replace it)\n"


def _bad_inputs(tmp_path):
    tm, args = torch_model(4)
    good = tmp_path / "good.pth"
    save_published_checkpoint(good, tm, args)
    raw = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04" + os.urandom(4000))
    torch.save({"model": {"transformer.wte.weight": torch.zeros(128, 32), "foo.weight": torch.zeros(3)},
                "model_args": args}, tmp_path / "other.pth")
    torch.save({"model": tm.state_dict(), "model_args": {**args, "n_embd": 30}}, tmp_path / "badconfig.pth")
    wrong_shape = dict(tm.state_dict())
    wrong_shape["transformer.h.0.tmix.key.weight"] = torch.zeros(32, 16)
    torch.save({"model": wrong_shape, "model_args": args}, tmp_path / "misshaped.pth")
    return {
        "missing.pth": f"{tmp_path / 'missing.pth'}: no such file",
        "truncated.pth": f"{tmp_path / 'truncated.pth'}: not a torch zip checkpoint",
        "corrupt.pth": f"{tmp_path / 'corrupt.pth'}: not a torch zip checkpoint",
        "other.pth": "state dict does not match the published MicroRWKV model: missing: transformer.wpe.weight",
        "badconfig.pth": "model_args: dim=32 differs from n_embd=30",
        "misshaped.pth": "state dict does not match the published MicroRWKV model: mis-shaped: "
                         "transformer.h.0.tmix.key.weight (32, 16) (expected (32, 32)) (1)",
    }


def test_bad_inputs_fail_with_one_line_and_write_nothing(tmp_path, capsys):
    for name, message in _bad_inputs(tmp_path).items():
        before = sorted(os.listdir(tmp_path))
        assert convert_main([str(tmp_path / name)]) == 1, name
        err = capsys.readouterr().err
        assert err.startswith(f"convert_torch_ckpt.py: error: {message}"), (name, err)
        assert err.count("\n") == 1, err
        assert sorted(os.listdir(tmp_path)) == before, name


def test_existing_output_is_kept_unless_forced(tmp_path, capsys):
    tm, args = torch_model(5)
    path = tmp_path / "ckpt.pth"
    save_published_checkpoint(path, tm, args)
    out = tmp_path / "dest"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert convert_main([str(path), "--out", str(out)]) == 1
    assert (out / "precious.txt").read_text() == "keep me"
    assert convert_main([str(path), "--out", str(out), "--force"]) == 0
    assert not (out / "precious.txt").exists()
    model, _ = load_model(out)
    idx = random_tokens(6, 1, 9)
    assert rel_err(jax_logits(model, idx), torch_logits(tm, idx)) <= 1e-5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_torch_reference_chunked_wkv_equals_its_token_loop():
    from tests import torch_reference as ref
    g = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(2, 256, 3, 8, generator=g) for _ in range(3))
    w = torch.rand(3, generator=g).clamp(0.01, 0.999).view(1, 3, 1, 1)
    u = torch.randn(3, generator=g).view(1, 3, 1, 1)
    a, b = ref.wkv_chunked(r, k, v, w, u), ref.wkv_loop(r, k, v, w, u)
    assert rel_err(a.numpy(), b.numpy()) <= 1e-5
