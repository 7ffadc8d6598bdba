"""The training config's checks: every key a run reads is required, by name."""

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
