"""Paths a user gives are made absolute where they enter the library, and an error of our own
code is never reported as a corrupt checkpoint."""

import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from microrwkv_jax.checkpoints import CorruptCheckpointError, stored_array_metadata, unreadable
from microrwkv_jax.paths import shown_path, user_path
from microrwkv_jax.training.train_config import load_config_file, with_absolute_paths
from tests.helpers import REPO


def test_orbax_metadata_of_a_relative_path_is_read(tmp_path, monkeypatch):
    """Given a relative path, orbax's metadata() returns None without an error; ours reads it."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "item", {"a/b": np.zeros((2, 3), np.float32)})
    monkeypatch.chdir(tmp_path)
    metadata = stored_array_metadata("item")
    assert list(metadata) == ["a/b"] and tuple(metadata["a/b"].shape) == (2, 3)
    with pytest.raises(CorruptCheckpointError, match="^missing: unreadable checkpoint"):
        stored_array_metadata("missing")


def test_only_errors_of_the_files_are_called_an_unreadable_checkpoint():
    err = unreadable("out/checkpoints/5", ValueError("tensorstore: file truncated"))
    assert isinstance(err, CorruptCheckpointError)
    assert str(err) == "out/checkpoints/5: unreadable checkpoint (ValueError: tensorstore: file truncated)"
    with pytest.raises(TypeError, match="'NoneType' object is not iterable"):
        unreadable("out/checkpoints/5", TypeError("'NoneType' object is not iterable"))


def test_a_runs_paths_become_absolute_and_built_in_names_stay(tmp_path, monkeypatch):
    cfg = load_config_file(str(REPO / "configs/tiny.py"))
    monkeypatch.chdir(tmp_path)
    stories = with_absolute_paths(cfg)
    assert stories.dataset == "stories" and stories.tokenizer == "byte" and stories.init_from == "scratch"
    assert stories.out_dir == str(tmp_path / "out") and stories.data.cache_dir == str(tmp_path / "data_cache")
    with cfg.unlocked():
        cfg.dataset, cfg.tokenizer, cfg.init_from, cfg.out_dir = "data/*.txt", "tok.json", "~/ckpt-500", "runs/a"
    own = with_absolute_paths(cfg)
    assert own.dataset == str(tmp_path / "data" / "*.txt") and own.tokenizer == str(tmp_path / "tok.json")
    assert own.init_from == os.path.expanduser("~/ckpt-500") and own.out_dir == str(tmp_path / "runs" / "a")
    assert cfg.dataset == "data/*.txt"          # the caller's config is left as it was
    assert shown_path(user_path("runs/a/checkpoints/4")) == "runs/a/checkpoints/4"
    assert shown_path("/elsewhere/out") == "/elsewhere/out"
