"""convert_torch_ckpt.py and the published family's state-dict names: variants, the command line,
bad inputs, existing outputs."""

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="torch is the test extra: pip install -e '.[test]'")

from microrwkv_jax import load_model  # noqa: E402
from tests.families.published_helpers import jax_logits, random_tokens, torch_logits, torch_model  # noqa: E402
from tests.helpers import REPO, load_script, rel_err  # noqa: E402
from torch_reference.published import save_published_checkpoint  # noqa: E402

convert_main = load_script("convert_torch_ckpt.py").main


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
    assert convert_main([str(path), "--out", str(out)]) == 0
    assert convert_main([str(path), "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"convert_torch_ckpt.py: error: {out} exists (use --force to replace it)\n"
    assert convert_main([str(path), "--out", str(out), "--force"]) == 0      # a model directory: replaced
    model, _ = load_model(out)
    idx = random_tokens(6, 1, 9)
    assert rel_err(jax_logits(model, idx), torch_logits(tm, idx)) <= 1e-5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _listing(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None) for p in root.rglob("*"))


def test_force_replaces_only_a_model_directory_that_does_not_hold_the_input(tmp_path, capsys):
    tm, args = torch_model(5)
    run = tmp_path / "run"
    run.mkdir()
    path = run / "ckpt.pth"
    save_published_checkpoint(path, tm, args)
    (run / "precious.txt").write_text("keep me")
    (tmp_path / "a_file").write_text("not a directory")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    convert_main([str(path), "--out", str(run / "model")])       # a real model directory, inside run/
    capsys.readouterr()
    cases = {
        run: f"{run} is not a model directory written by this project (no .microrwkv-model-dir); --force replaces only those",
        other: f"{other} is not a model directory written by this project (no .microrwkv-model-dir); --force replaces only those",
        tmp_path / "a_file": f"{tmp_path / 'a_file'} is not a directory; --force replaces only a model directory",
    }
    for out, message in cases.items():
        before = _listing(tmp_path)
        assert convert_main([str(path), "--out", str(out), "--force"]) == 1
        assert capsys.readouterr().err == f"convert_torch_ckpt.py: error: {message}\n"
        assert _listing(tmp_path) == before, out           # nothing deleted, renamed or left behind
    # A model directory that holds the input is not replaced either.
    inner = run / "model"
    save_published_checkpoint(inner / "ckpt.pth", tm, args)
    before = _listing(tmp_path)
    assert convert_main([str(inner / "ckpt.pth"), "--out", str(inner), "--force"]) == 1
    assert capsys.readouterr().err == f"convert_torch_ckpt.py: error: {inner} holds {inner / 'ckpt.pth'}; refusing to replace it\n"
    assert _listing(tmp_path) == before
