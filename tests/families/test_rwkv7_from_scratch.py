"""RWKV-7 trained here from scratch (configs/rwkv7.py, BlinkDL's initialisation, the chunked WKV)
on a text file, exported with `convert_torch_ckpt.py --to pth`, and run by BlinkDL's `rwkv`
package: the same logits and the same greedy continuation as ours."""

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from microrwkv_jax.families import build_model, model_config
from microrwkv_jax.families.rwkv7.model import lora_dims
from tests.families.rwkv_package import run_package
from tests.helpers import REPO, rel_err
from tests.training.test_trainer import train_cli

pytest.importorskip("rwkv", reason="BlinkDL's rwkv package (the test extra) is the reference")


def test_a_model_trained_here_exports_to_pth_and_the_package_gives_its_logits(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("".join(f"Line {i}: the goose swims across the lake, {i * 7 % 13} times.\n" for i in range(3000)))
    run = tmp_path / "run"
    train_cli(run, f"--config.dataset={text}", "--config.eval_every=4", "--config.checkpoint_every=4",
              "--config.model.n_embd=64", "--config.model.n_head=1", config="configs/rwkv7.py")
    done = subprocess.run([sys.executable, "convert_torch_ckpt.py", str(run), "--to", "pth"], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    pth = tmp_path / "run.pth"
    assert done.stdout.startswith(f"exported {run} -> {pth}\n  model: RWKV-7: n_layer=2 n_embd=64 n_head=1 vocab_size=257")
    tokens = [[76, 105, 110, 101, 32, 49, 58, 32, 116, 104, 101, 32, 103, 111, 111, 115, 101]]
    reference = run_package({"trained": pth}, tokens, greedy=8, v7=True, workdir=tmp_path)

    from microrwkv_jax.loading import load_model
    model, config = load_model(run)
    assert config.arch == "rwkv7" and config.chunk_size == 32       # (the chunked form, chunks of 32: TINY's)
    logits = np.asarray(model(jnp.asarray(tokens)))[0, :, :config.vocab_size]
    assert rel_err(logits, reference["trained/0/seq"]) <= 1e-5
    assert rel_err(logits, reference["trained/0/rnn"]) <= 1e-5
    state = model.init_state(1)
    last, state, _ = model.forward(jnp.asarray(tokens), state)
    greedy = []
    for _ in range(8):
        token = int(jnp.argmax(last[0, -1, :config.vocab_size]))
        greedy.append(token)
        last, state, _ = model.forward(jnp.asarray([[token]]), state)
    assert greedy == reference["trained/0/greedy"].tolist()
    # The export refuses to overwrite, and a family without BlinkDL's layout, in one line each.
    again = subprocess.run([sys.executable, "convert_torch_ckpt.py", str(run), "--to", "pth"], capture_output=True,
                           text=True, cwd=REPO, timeout=300)
    assert again.returncode == 1 and again.stderr == f"convert_torch_ckpt.py: error: {pth} exists: pass --force to replace it\n"


def test_the_rwkv7_preset_starts_from_blinkdl_initialisation():
    """The values RWKV-LM's RWKV-v7/train_temp gives a new model, at a few channels of a 2-layer
    model of width 128 in heads of 64 (written out from its formulas)."""
    config = model_config("rwkv7", vocab_size=97, n_layer=2, n_embd=128, n_head=2)
    model = build_model(config)
    att0, att1 = model.blocks[0].att, model.blocks[1].att
    assert lora_dims(config) == (32, 32, 32, 64)       # 2.5, 2.5, 1.7, 5 x sqrt(128), in multiples of 32
    # Channel 0 of head 0: linear = -0.5, zigzag = -1; channel 127: linear = 0.5, zigzag = +1.
    np.testing.assert_allclose(np.asarray(att0.w0[...])[[0, 127]], [-6 + 0.5 - 2.5, -6 + 6 + 0.5 + 2.5], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(att0.a0[...])[[0, 127]], [-0.19 - 0.3 - 0.2, -0.19 + 0.3 + 0.2], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(att1.v0[...])[[0, 127]], [0.73 + 0.2, 0.73 - 0.2], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(att0.k_k[...])[[0, 127]], [0.71 + 0.05, 0.71 - 0.05], rtol=1e-6)
    assert np.all(att0.k_a[...] == np.float32(1.02)) and np.all(att0.r_k[...] == np.float32(-0.04))
    np.testing.assert_allclose(att0.ln_x.weight[...], 0.5 ** 0.7, rtol=1e-6)
    np.testing.assert_allclose(att1.ln_x.weight[...], 1.0, rtol=1e-6)
    assert not hasattr(att0, "v0") and np.all(att0.w1[...] == 0) and np.all(att0.output.kernel[...] == 0)
    w2 = np.asarray(att0.w2[...])                       # [32, 128]: orthonormal rows at gain 0.1
    np.testing.assert_allclose(w2 @ w2.T, 0.01 * np.eye(32), atol=1e-6)
    key = np.asarray(att0.key.kernel[...])              # orthogonal at gain 0.1
    np.testing.assert_allclose(key.T @ key, 0.01 * np.eye(128), atol=1e-5)
    emb = np.asarray(model.emb.embedding[...])
    assert np.abs(emb).max() <= 1e-4 and np.all(model.blocks[0].ffn.value.kernel[...] == 0)
    head = np.asarray(model.head[...])                  # [128 padded vocab, 128]: orthogonal, gain 0.5
    np.testing.assert_allclose(head.T @ head, 0.25 * np.eye(128), atol=1e-5)
