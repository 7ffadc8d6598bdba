"""Checkpoints on disk: parameter names, model directories, a run's checkpoint manager."""

import numpy as np
import orbax.checkpoint as ocp

from microrwkv_jax.checkpoints import run_checkpoint_manager


def test_checkpoint_manager_keeps_the_last_k_and_the_best(tmp_path):
    manager = run_checkpoint_manager(tmp_path, keep=2)
    for step, val in zip(range(1, 7), [5.0, 1.0, 4.0, 3.0, 6.0, 7.0]):
        manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave({"w": np.full(3, step, np.float32)}),
                                                   opt_state=ocp.args.StandardSave({"m": np.zeros(1)}),
                                                   meta=ocp.args.JsonSave({"step": step})),
                     metrics={"val_loss": val})
        manager.wait_until_finished()
    manager.close()
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2, 5, 6]


# --- model directories: checksums, missing and truncated files ------------------------------------

import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from microrwkv_jax import LanguageModel  # noqa: E402
from microrwkv_jax.checkpoints import CorruptCheckpointError, restore_model_dir, save_model_dir  # noqa: E402
from microrwkv_jax.loading import load_model  # noqa: E402
from tests.helpers import flip_bytes, load_script, tiny_config  # noqa: E402


@pytest.fixture
def model_dir(tmp_path):
    model = LanguageModel(tiny_config("rwkv", vocab_size=257), rngs=nnx.Rngs(0))
    path = tmp_path / "model"
    save_model_dir(path, model, {"model": model.config.to_dict(), "tokenizer": "byte"})
    return path


def test_a_model_directory_restores_and_records_checksums(model_dir):
    model, config, meta = restore_model_dir(model_dir)
    assert set(meta["checksums"]) == {"params"} and len(meta["checksums"]["params"]) == len(nnx.to_flat_state(
        nnx.state(model, nnx.Param)))


CORRUPTIONS = {
    "flipped bytes": lambda d: flip_bytes(d / "params"),
    "deleted manifest": lambda d: (d / "params" / "manifest.ocdbt").unlink(),
    "truncated data": lambda d: [p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
                                 for p in (d / "params").rglob("*") if p.is_file() and p.parent.name == "d"],
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_model_directory_fails_with_one_line_naming_it(model_dir, corruption, capsys):
    CORRUPTIONS[corruption](model_dir)
    with pytest.raises(CorruptCheckpointError) as err:
        load_model(model_dir)
    message = str(err.value)
    assert message.startswith(f"{model_dir / 'params'}: ") and "\n" not in message and len(message) < 400
    assert load_script("sample.py").main(["--ckpt", str(model_dir), "--max_new_tokens", "2"]) == 1
    out, printed = capsys.readouterr()      # (which array orbax trips on first may vary between reads)
    assert printed.startswith(f"sample.py: error: {model_dir / 'params'}: ") and printed.count("\n") == 1
