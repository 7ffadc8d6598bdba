"""The training config's checks: every key a run reads is required, by name."""

import json

import pytest

from configs.tiny import get_config
from microrwkv_jax.training.train_config import REQUIRED_DATA_KEYS, REQUIRED_KEYS, validate_config


def test_the_shipped_config_passes():
    validate_config(get_config())


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_a_config_lacking_a_key_is_refused_naming_it(key):
    cfg = get_config()
    del cfg[key]
    with pytest.raises(ValueError) as err:
        validate_config(cfg)
    assert str(err.value) == f"config: missing key {key!r}"


@pytest.mark.parametrize("key", REQUIRED_DATA_KEYS)
def test_a_data_section_lacking_a_key_is_refused_naming_it(key):
    cfg = get_config()
    del cfg.data[key]
    with pytest.raises(ValueError) as err:
        validate_config(cfg)
    assert str(err.value) == f"config: missing key 'data.{key}'"


def test_a_data_setting_an_older_checkpoint_did_not_record_counts_only_for_local_files():
    """Checkpoints from before data.txt_split / data.val_dataset resume on the built-in stories
    (the settings change nothing there) and are refused on a .txt (they change how it reads)."""
    from microrwkv_jax.training.run import run_key_differences
    now = json.loads(get_config().to_json_best_effort())
    older = json.loads(get_config().to_json_best_effort())
    for key in ("txt_split", "val_dataset"):
        del older["data"][key]
    assert run_key_differences(older, now) == []
    older["dataset"] = now["dataset"] = "/data/my.txt"
    assert run_key_differences(older, now) == [("data.txt_split", None, "stream")]
    assert run_key_differences(now, now) == []
