"""The cheap ways to adapt a BlinkDL checkpoint, through train.py, against BlinkDL's `rwkv` package.

State tuning (`--config.tune=state`): an RWKV-6 or RWKV-7 checkpoint trains only an initial WKV
state per layer and head, everything else frozen bit for bit with no optimizer state; the result
is written back as the `time_state` tensors the package loads, and the package gives the tuned
model's logits (for RWKV-7, which the package does not start from its file's time_state, with
those tensors passed as its initial state: tests/families/rwkv_package.py). LoRA (`--config.tune=lora`): an RWKV-7 checkpoint trains only low-rank adapters
on its matrices; exported, the adapters are merged, and the package gives the tuned logits."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.rwkv_package_peer import random_state_dict
from microrwkv_jax.families import FAMILIES, model_config
from microrwkv_jax.torch_pth_writer import write_pth
from tests.families.rwkv_package import run_package
from tests.helpers import REPO, rel_err
from tests.training.test_trainer import final_params, train_cli

pytest.importorskip("rwkv", reason="BlinkDL's rwkv package (the test extra) is the reference")
# Two steps of one window: a checkpoint's model trains at its own block size (BlinkDL's 4,096).
SHORT = ("--config.batch_size=1", "--config.num_train_steps=2", "--config.eval_every=2", "--config.checkpoint_every=2")


def assert_base_unchanged(params: dict, base: dict, table) -> None:
    """Every parameter of the BlinkDL state dict `base` is exactly as loaded (its vocabulary rows)."""
    for blink, _, ours, transform in table:
        stored = base[blink] if transform is None else np.asarray(transform(base[blink]))
        value = params[ours][: stored.shape[0]] if ours in ("emb/embedding", "head") else params[ours]
        assert np.array_equal(value, stored.reshape(value.shape)), ours


def base_checkpoint(tmp_path, config, seed: int, line: str):
    """A random BlinkDL `.pth` of `config` in the official layout, and a text file of 2,000 lines
    `line.format(i=i, j=...)` to tune it on. Returns (name table, base state dict, .pth path, text path)."""
    table = FAMILIES[config.arch].torch_checkpoint.parameter_map(config)
    base = {k: np.asarray(v, np.float32) for k, v in random_state_dict(table, seed=seed).items()}
    text = tmp_path / "text.txt"
    text.write_text("".join(line.format(i=i, j=i * 11 % 17) for i in range(2000)))
    return table, base, write_pth(tmp_path / "base.pth", base), text


def export(run):
    done = subprocess.run([sys.executable, "convert_torch_ckpt.py", str(run), "--to", "pth"], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("arch, fields", [("rwkv6", dict(ffn_dim=224, lora_dims=(8, 16))),
                                          ("rwkv7", dict(ffn_dim=256, lora_dims=(16, 16, 8, 32)))])
def test_state_tuning_trains_only_the_states_and_the_package_runs_the_result(tmp_path, arch, fields):
    config = model_config(arch, n_layer=2, n_embd=64, n_head=2, vocab_size=65536, **fields)
    table, base, base_pth, text = base_checkpoint(tmp_path, config, 3, "Row {i}: state tuning keeps the weights, "
                                                  "{j} apples.\n")
    run = tmp_path / "run"
    train_cli(run, f"--config.init_from={base_pth}", "--config.tokenizer=world", "--config.tune=state",
              f"--config.dataset={text}", "--config.learning_rate=0.05", *SHORT)
    params, meta = final_params(run)
    assert meta["model"]["time_state"] is True
    states = {k: v for k, v in params.items() if k.endswith("/att/time_state")}
    assert sorted(states) == ["blocks/0/att/time_state", "blocks/1/att/time_state"]
    assert all(v.shape == (2, 32, 32) and np.abs(v).max() > 0 for v in states.values())   # trained from zeros
    assert_base_unchanged(params, base, table)
    export(run)
    tokens = [[82, 111, 119, 32, 49, 58, 32, 115, 116, 97, 116, 101]]
    reference = run_package({"tuned": tmp_path / "run.pth"}, tokens, greedy=4, v7=arch == "rwkv7", workdir=tmp_path)
    from microrwkv_jax.loading import load_model
    model, loaded = load_model(tmp_path / "run.pth")           # and the .pth reads back, time_state included
    assert loaded.time_state
    ours = np.asarray(model(jnp.asarray(tokens)))[0, :, :65536]
    assert rel_err(ours, reference["tuned/0/rnn"]) <= 1e-5 and rel_err(ours, reference["tuned/0/seq"]) <= 1e-5
    untuned, _ = load_model(base_pth)
    assert rel_err(np.asarray(untuned(jnp.asarray(tokens)))[0, :, :65536], reference["tuned/0/seq"]) > 1e-3


@pytest.mark.parametrize("tune, trained", [("state", "blocks/0/att/time_state"),
                                            ("lora", "blocks/0/att/key/kernel@lora_b")])
def test_optimizer_state_only_for_what_trains(tune, trained):
    from microrwkv_jax.training.optimizer import make_optimizer
    from ml_collections import ConfigDict
    cfg = ConfigDict(dict(tune=tune, grad_clip=1.0, beta1=0.9, beta2=0.99, weight_decay=0.1))
    params = {trained: jnp.zeros((2, 4, 4)), "blocks/0/att/key/kernel": jnp.zeros((8, 8)),
              "emb/embedding": jnp.zeros((16, 8))}
    state = make_optimizer(cfg, {"blocks/0/att/key/kernel"}).init(params)
    shapes = [leaf.shape for leaf in jax.tree_util.tree_leaves(state) if np.ndim(leaf)]
    assert shapes == [(2, 4, 4), (2, 4, 4)]         # Adam's two moments of what trains, nothing for the rest
    grads = {k: jnp.ones_like(v) for k, v in params.items()}
    updates, _ = make_optimizer(cfg, {"blocks/0/att/key/kernel"}).update(grads, state, params)
    assert all(np.all(np.asarray(updates[k]) == 0) for k in params if k != trained)
    assert np.all(np.asarray(updates[trained]) != 0)


def test_lora_trains_only_adapters_and_the_merged_export_runs_in_the_package(tmp_path):
    config = model_config("rwkv7", n_layer=2, n_embd=64, n_head=1, vocab_size=65536, ffn_dim=256,
                          lora_dims=(16, 16, 8, 32))
    table, base, base_pth, text = base_checkpoint(tmp_path, config, 4, "Goose {i}: low-rank adapters learn, "
                                                  "{j} ponds.\n")
    run = tmp_path / "run"
    train_cli(run, f"--config.init_from={base_pth}", "--config.tokenizer=world", "--config.tune=lora",
              "--config.lora_rank=4", "--config.lora_targets=('blocks/*/att/*',)", f"--config.dataset={text}",
              "--config.learning_rate=0.05", *SHORT)
    from microrwkv_jax.checkpoints import restore_run_params
    raw, meta = restore_run_params(run)
    adapters = sorted(k for k in raw if "@lora" in k)
    assert adapters == sorted(f"blocks/{i}/att/{m}/kernel@lora_{ab}" for i in range(2)
                              for m in ("key", "output", "receptance", "value") for ab in "ab")
    assert all(raw[k].shape == ((64, 4) if k.endswith("_a") else (4, 64)) for k in adapters)
    assert all(np.abs(raw[k]).max() > 0 for k in adapters if k.endswith("_b"))      # trained from zeros
    assert_base_unchanged(raw, base, table)
    export(run)
    from microrwkv_jax.torch_checkpoint import load_torch_checkpoint, read_tensors
    exported = read_tensors(load_torch_checkpoint(tmp_path / "run.pth"))
    merged = raw["blocks/1/att/key/kernel"] + raw["blocks/1/att/key/kernel@lora_a"] @ raw["blocks/1/att/key/kernel@lora_b"]
    np.testing.assert_allclose(exported["blocks.1.att.key.weight"], merged.T, rtol=1e-6, atol=1e-7)
    assert np.array_equal(exported["blocks.1.ffn.key.weight"], base["blocks.1.ffn.key.weight"])    # not a target
    tokens = [[71, 111, 111, 115, 101, 32, 49, 58, 32, 108, 111, 119]]
    reference = run_package({"lora": tmp_path / "run.pth"}, tokens, greedy=4, v7=True, workdir=tmp_path)
    from microrwkv_jax.loading import load_model
    model, _ = load_model(run)                                # the run directory: adapters merged on load
    ours = np.asarray(model(jnp.asarray(tokens)))[0, :, :65536]
    assert rel_err(ours, reference["lora/0/seq"]) <= 1e-5 and rel_err(ours, reference["lora/0/rnn"]) <= 1e-5
    untuned, _ = load_model(base_pth)
    assert rel_err(np.asarray(untuned(jnp.asarray(tokens)))[0, :, :65536], reference["lora/0/seq"]) > 1e-3
