"""The published PyTorch checkpoints' names: a state dict -> (ModelConfig, our parameters).

The table `published_parameter_map` is the one place that knows the published state-dict
names: it gives each name's shape (for validation) and where its values go in
`PublishedModel` (PyTorch Linear weights [out, in] become Flax kernels [in, out]). Everything
here is a pure function of the checkpoint's contents; reading the file is
`microrwkv_jax.torch_checkpoint`'s job, writing a model directory `microrwkv_jax.convert`'s.
"""

from __future__ import annotations

import numpy as np

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.families.published.model import GQA_GROUPS, check_config, expert_width
from microrwkv_jax.torch_checkpoint import ConversionError, check_state_dict, tensor_reader

MODEL_ARGS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "num_experts",
              "num_active_experts", "expert_dim", "dim", "bias")
PREFIXES = ("_orig_mod.", "module.")


def config_from_model_args(model_args: dict) -> ModelConfig:
    """The `arch="published"` ModelConfig of a checkpoint's `model_args`."""
    if not isinstance(model_args, dict):
        raise ConversionError("checkpoint has no 'model_args' dict")
    missing = [k for k in MODEL_ARGS if k not in model_args]
    if missing:
        raise ConversionError(f"model_args lacks {missing}")
    if model_args["dim"] != model_args["n_embd"]:
        raise ConversionError(f"model_args: dim={model_args['dim']} differs from n_embd={model_args['n_embd']}; "
                              "the published model needs them equal")
    try:
        config = ModelConfig(arch="published", **{k: model_args[k] for k in MODEL_ARGS if k != "dim"})
        check_config(config)
        return config
    except (ValueError, TypeError) as err:
        raise ConversionError(f"model_args cannot build a model: {err}") from None


def _linear(torch_prefix, our_prefix, d_in, d_out, bias):
    entries = [(f"{torch_prefix}.weight", (d_out, d_in), f"{our_prefix}/kernel", np.transpose)]
    if bias:
        entries.append((f"{torch_prefix}.bias", (d_out,), f"{our_prefix}/bias", None))
    return entries


def published_parameter_map(config: ModelConfig):
    """[(torch name, torch shape, our flat name, transform or None)], in state-dict order.
    Expert weights map to ("moe/experts_kernel", j): row j of a stacked parameter."""
    c, h, b = config.n_embd, config.n_head, config.bias
    x = expert_width(config.expert_dim)
    vec = lambda a: a.reshape(-1)
    entries = [("transformer.wte.weight", (config.vocab_size, c), "wte/embedding", None),
               ("transformer.wpe.weight", (config.block_size, c), "wpe/embedding", None)]
    for i in range(config.n_layer):
        t, o = f"transformer.h.{i}.", f"blocks/{i}/"
        for name in ("time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g"):
            entries.append((f"{t}tmix.{name}", (1, 1, c), f"{o}tmix/{name}", vec))
        entries += [(f"{t}tmix.time_decay", (h, 1), f"{o}tmix/time_decay", vec),
                    (f"{t}tmix.time_faaaa", (h, 1), f"{o}tmix/time_faaaa", vec)]
        for name in ("receptance", "key", "value", "gate", "output"):
            entries += _linear(f"{t}tmix.{name}", f"{o}tmix/{name}", c, c, b)
        entries += [(f"{t}tmix.ln_x.weight", (c,), f"{o}tmix/ln_x/weight", None),
                    (f"{t}tmix.ln_x.bias", (c,), f"{o}tmix/ln_x/bias", None)]
        for name in ("time_maa_k", "time_maa_r"):
            entries.append((f"{t}cmix.{name}", (1, 1, c), f"{o}cmix/{name}", vec))
        entries += _linear(f"{t}cmix.key", f"{o}cmix/key", c, 3 * c, b)
        entries += _linear(f"{t}cmix.value", f"{o}cmix/value", 3 * c, c, b)
        entries += _linear(f"{t}cmix.receptance", f"{o}cmix/receptance", c, c, b)
        entries += _linear(f"{t}sliding_attn.qkv", f"{o}sliding_attn/qkv", c, 3 * c, False)
        entries += _linear(f"{t}sliding_attn.proj", f"{o}sliding_attn/proj", c, c, False)
        entries += _linear(f"{t}grouped_attn.qkvw", f"{o}grouped_attn/qkvw", c, GQA_GROUPS * c, False)
        entries += _linear(f"{t}grouped_attn.out", f"{o}grouped_attn/out", c, c, False)
        entries += _linear(f"{t}moe.gate", f"{o}moe/gate", c, config.num_experts, True)
        for j in range(config.num_active_experts):
            entries += [(f"{t}moe.experts.{j}.weight", (x, c), (f"{o}moe/experts_kernel", j), np.transpose),
                        (f"{t}moe.experts.{j}.bias", (x,), (f"{o}moe/experts_bias", j), None)]
        entries += _linear(f"{t}moe.fc", f"{o}moe/fc", x, c, True)
    entries.append(("transformer.ln_f.weight", (c,), "ln_f/scale", None))
    if b:
        entries.append(("transformer.ln_f.bias", (c,), "ln_f/bias", None))
    entries.append(("lm_head.weight", (config.vocab_size, c), None, None))   # tied to wte
    return entries


def strip_prefixes(state_dict: dict) -> dict:
    out = {}
    for name, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix):], True
        out[name] = value
    return out


def params_from_state_dict(state_dict: dict, config: ModelConfig) -> dict:
    """Check every name and shape, then return our flat parameters as readers {our name: () -> array}."""
    state_dict = strip_prefixes(state_dict)
    table = published_parameter_map(config)
    expected = {name: shape for name, shape, _, _ in table}
    check_state_dict(state_dict, expected, "the published MicroRWKV model")
    flat, stacked = {}, {}
    for name, _, target, transform in table:
        if isinstance(target, tuple):         # one expert of a stack [E, ...]
            stacked.setdefault(target[0], {})[target[1]] = tensor_reader(state_dict[name], transform)
        elif target is not None:
            flat[target] = tensor_reader(state_dict[name], transform)
    for target, rows in stacked.items():
        flat[target] = lambda rows=rows: np.stack([rows[j]() for j in sorted(rows)])
    return flat


def recognizes(ckpt: dict) -> bool:
    """A published training script's checkpoint: {"model": state dict, "model_args": ..., ...}."""
    return isinstance(ckpt.get("model"), dict)


def read_checkpoint(ckpt: dict):
    """(ModelConfig, flat parameters as readers) of a published checkpoint dict, every name and shape checked."""
    config = config_from_model_args(ckpt.get("model_args"))
    return config, params_from_state_dict(ckpt["model"], config)
