import pytest

from microrwkv_jax import ModelConfig, model_config


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_embd=100, n_head=8), "n_embd=100: must be divisible by n_head=8"),
    (dict(n_head=8, n_kv_head=3), "n_kv_head=3: must divide n_head=8"),
    (dict(swa_window=0), "swa_window=0: must be a positive integer"),
    (dict(gqa_window=-4), "gqa_window=-4: must be None (global) or a positive integer"),
    (dict(num_experts=4, num_active_experts=5), "num_active_experts=5: must be <= num_experts=4"),
    (dict(n_layer=0), "n_layer=0: must be a positive integer"),
    (dict(dtype="float8"), "dtype='float8': expected one of ('float32', 'bfloat16', 'float16')"),
])
def test_impossible_settings_name_the_field_and_value(kwargs, message):
    with pytest.raises(ValueError) as err:
        ModelConfig(**kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize("preset, kwargs, message", [
    ("hybrid", dict(layers=("time_mix", "attn")),
     "layers=('time_mix', 'attn'): unknown sub-layer 'attn'; expected names from ('time_mix', 'time_mix7', 'channel_mix', 'swa', 'gqa', 'moe', 'mlp')"),
    ("hybrid", dict(layers=()), "layers=(): must name at least one sub-layer"),
    ("rwkv", dict(layers=("time_mix", "time_mix")), "layers=('time_mix', 'time_mix'): names a sub-layer twice"),
    ("published", dict(n_embd=40, n_head=4), "n_embd=40: the published GQA needs n_embd divisible by 4 * n_head = 16"),
    ("published", dict(n_layer=1), "n_layer=1: the published initialisation divides by n_layer - 1 and n_head - 1; use >= 2"),
])
def test_each_family_checks_its_own_fields(preset, kwargs, message):
    with pytest.raises(ValueError) as err:
        model_config(preset, **kwargs)
    assert str(err.value) == message


def test_unknown_arch_is_refused_by_the_registry():
    from microrwkv_jax.families import build_model, get_family
    with pytest.raises(ValueError) as err:
        get_family("gpt")
    assert str(err.value) == "arch='gpt': expected one of ('causal', 'published', 'gpt2', 'rwkv4', 'rwkv5', 'rwkv6', 'rwkv7')"
    with pytest.raises(ValueError, match=r"^arch='gpt': expected one of"):
        build_model(ModelConfig(arch="gpt"))


def test_defaults_and_families():
    c = ModelConfig()
    assert c.layers == ("time_mix", "channel_mix", "swa", "gqa", "moe")
    assert c.n_kv_head == 2 and c.swa_window == 256 and c.gqa_window is None
    assert c.padded_vocab_size == 50304
    assert model_config("rwkv").layers == ("time_mix", "channel_mix")
    assert model_config("gpt").layers == ("gqa", "mlp")
    assert model_config("published").arch == "published"
    with pytest.raises(ValueError, match=r"^family: unknown model family 'bert'"):
        model_config("bert")


def test_dict_round_trip_and_unknown_keys():
    c = ModelConfig(n_layer=3)
    assert ModelConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match=r"^model config: unknown keys \['n_layers'\]$"):
        ModelConfig.from_dict({"n_layers": 3})


@pytest.mark.parametrize("preset, arch, layers", [
    ("hybrid", "causal", ("time_mix", "channel_mix", "swa", "gqa", "moe")), ("rwkv", "causal", ("time_mix", "channel_mix")),
    ("gpt", "causal", ("gqa", "mlp")), ("published", "published", ("time_mix", "channel_mix", "swa", "gqa", "moe"))])
def test_a_training_configs_model_section_becomes_its_presets_config(preset, arch, layers):
    from configs.tiny import get_config
    from microrwkv_jax.families import model_config_from
    model = get_config().model
    model.family = preset
    config = model_config_from(model, 257, backend="cpu")
    assert (config.arch, config.layers, config.vocab_size, config.dtype) == (arch, layers, 257, "float32")
    assert config.gqa_window is None and config.n_kv_head == 1 and config.n_embd == 128
    assert model_config_from(model, 257, backend="gpu").dtype == "bfloat16"      # "auto"
    model.vocab_size = 100
    with pytest.raises(ValueError) as err:
        model_config_from(model, 257, backend="cpu")
    assert str(err.value) == "model.vocab_size=100: smaller than the tokenizer's vocabulary (257)"


def test_a_none_in_the_model_section_keeps_the_presets_value_or_else_the_default():
    """configs/finetune_rwkv7_2b9.py leaves every shape None: the rwkv7 presets' n_kv_head=1
    stays (None there once meant n_head // 4, which RWKV-7 refuses); a hybrid's None n_kv_head
    and gqa_window are the defaults (n_head // 4, global attention)."""
    from configs.finetune_rwkv7_2b9 import get_config
    from microrwkv_jax.families import model_config_from
    model = get_config().model
    config = model_config_from(model, 65536, backend="cpu")
    assert (config.arch, config.n_layer, config.n_embd, config.n_head, config.n_kv_head) == ("rwkv7", 32, 2560, 40, 1)
    assert (config.block_size, config.chunk_size, config.remat) == (4096, 16, True)
    model.family = "hybrid"
    config = model_config_from(model, 65536, backend="cpu")
    assert (config.n_kv_head, config.gqa_window) == (config.n_head // 4, None)
