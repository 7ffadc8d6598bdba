"""GPT-2's Hugging Face checkpoints (`GPT2LMHeadModel`): config.json -> ModelConfig, and the one
table of state-dict names. GPT-2's `Conv1D` stores weights [in, out], as Flax kernels are, so
nothing is transposed; the embedding is padded to a multiple of 64 rows."""

from __future__ import annotations

import numpy as np

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.families.gpt2.model import check_config
from microrwkv_jax.torch_checkpoint import ConversionError, check_state_dict, tensor_reader

IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")     # causal-mask buffers of older checkpoints


def config_from_hf(hf: dict) -> ModelConfig:
    """The ModelConfig of a GPT-2 config.json; refuses what this implementation does not compute."""
    try:
        c, n_inner = hf["n_embd"], hf.get("n_inner")
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConversionError(f"config.json: activation_function={hf['activation_function']!r}; GPT-2 uses gelu_new")
        if n_inner not in (None, 4 * c):
            raise ConversionError(f"config.json: n_inner={n_inner}; only 4 * n_embd is supported")
        if hf.get("layer_norm_epsilon", 1e-5) != 1e-5:
            raise ConversionError(f"config.json: layer_norm_epsilon={hf['layer_norm_epsilon']}; only 1e-5 is supported")
        config = ModelConfig(arch="gpt2", vocab_size=hf["vocab_size"], block_size=hf["n_positions"],
                             n_layer=hf["n_layer"], n_embd=c, n_head=hf["n_head"], n_kv_head=hf["n_head"],
                             mlp_ratio=4, bias=True)
    except KeyError as err:
        raise ConversionError(f"config.json lacks {err}") from None
    except (TypeError, ValueError) as err:
        raise ConversionError(f"config.json cannot build a GPT-2: {err}") from None
    check_config(config)
    return config


def parameter_map(config: ModelConfig):
    """[(state-dict name, its shape, our flat name)] of GPT2LMHeadModel, without the tied lm_head."""
    c, v = config.n_embd, config.vocab_size
    entries = [("wte.weight", (v, c), "wte/embedding"), ("wpe.weight", (config.block_size, c), "wpe/embedding")]
    for i in range(config.n_layer):
        h, o = f"h.{i}.", f"blocks/{i}/"
        for hf_name, ours, shape in (("ln_1", "ln_1", None), ("ln_2", "ln_2", None), ("attn.c_attn", "attn/qkv", 3 * c),
                                     ("attn.c_proj", "attn/proj", c), ("mlp.c_fc", "mlp/fc", 4 * c),
                                     ("mlp.c_proj", "mlp/proj", c)):
            if shape is None:       # a LayerNorm
                entries += [(f"{h}{hf_name}.weight", (c,), f"{o}{ours}/scale"), (f"{h}{hf_name}.bias", (c,), f"{o}{ours}/bias")]
            else:
                d_in = 4 * c if hf_name == "mlp.c_proj" else c
                entries += [(f"{h}{hf_name}.weight", (d_in, shape), f"{o}{ours}/kernel"),
                            (f"{h}{hf_name}.bias", (shape,), f"{o}{ours}/bias")]
    entries += [("ln_f.weight", (c,), "ln_f/scale"), ("ln_f.bias", (c,), "ln_f/bias")]
    return entries


def read_checkpoint(hf_config: dict, state_dict: dict):
    """(ModelConfig, flat parameters as readers {our name: () -> array}) of a GPT2LMHeadModel state
    dict, every name and shape checked."""
    config = config_from_hf(hf_config)
    names = {}
    for name, value in state_dict.items():
        short = name[len("transformer."):] if name.startswith("transformer.") else name
        if not short.endswith(IGNORED_SUFFIXES):
            names[short] = value
    table = parameter_map(config)
    expected = {name: shape for name, shape, _ in table}
    lm_head = names.pop("lm_head.weight", None)
    check_state_dict(names, expected, "GPT-2")
    if lm_head is not None and not np.array_equal(np.asarray(lm_head, np.float32), np.asarray(names["wte.weight"], np.float32)):
        raise ConversionError("lm_head.weight differs from wte.weight: GPT-2's head is tied")
    pad = config.padded_vocab_size - config.vocab_size
    return config, {ours: tensor_reader(names[name], pad_rows=pad if ours == "wte/embedding" else 0)
                    for name, _, ours in table}
