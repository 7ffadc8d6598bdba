import pytest

from microrwkv_jax import ModelConfig


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_embd=100, n_head=8), "n_embd=100: must be divisible by n_head=8"),
    (dict(n_head=8, n_kv_head=3), "n_kv_head=3: must divide n_head=8"),
    (dict(swa_window=0), "swa_window=0: must be a positive integer"),
    (dict(gqa_window=-4), "gqa_window=-4: must be None (global) or a positive integer"),
    (dict(num_experts=4, num_active_experts=5), "num_active_experts=5: must be <= num_experts=4"),
    (dict(layers=("time_mix", "attn")), "layers=('time_mix', 'attn'): unknown sub-layer 'attn'; expected names from ('time_mix', 'channel_mix', 'swa', 'gqa', 'moe', 'mlp')"),
    (dict(layers=()), "layers=(): must name at least one sub-layer"),
    (dict(n_layer=0), "n_layer=0: must be a positive integer"),
    (dict(dtype="float8"), "dtype='float8': expected one of ('float32', 'bfloat16', 'float16')"),
    (dict(arch="gpt"), "arch='gpt': expected one of ('causal', 'published')"),
])
def test_impossible_settings_name_the_field_and_value(kwargs, message):
    with pytest.raises(ValueError) as err:
        ModelConfig(**kwargs)
    assert str(err.value) == message


def test_defaults_and_families():
    c = ModelConfig()
    assert c.layers == ("time_mix", "channel_mix", "swa", "gqa", "moe")
    assert c.n_kv_head == 2 and c.swa_window == 256 and c.gqa_window is None
    assert c.padded_vocab_size == 50304
    assert ModelConfig.family("rwkv").layers == ("time_mix", "channel_mix")
    assert ModelConfig.family("gpt").layers == ("gqa", "mlp")
    with pytest.raises(ValueError, match=r"^family: unknown model family 'bert'"):
        ModelConfig.family("bert")


def test_dict_round_trip_and_unknown_keys():
    c = ModelConfig(n_layer=3)
    assert ModelConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match=r"^model config: unknown keys \['n_layers'\]$"):
        ModelConfig.from_dict({"n_layers": 3})
