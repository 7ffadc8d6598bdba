"""RWKV-4's checkpoints: `transformers`' RwkvForCausalLM directories and BlinkDL's bare `.pth`
state dicts (RWKV-4-Pile-169M-....pth). One table gives, for every parameter, both names, the
shape they store and our flat name; torch Linear weights [out, in] become Flax kernels [in, out],
the [1, 1, C] time-mix vectors become [C], and the vocabulary is padded to a multiple of 64."""

from __future__ import annotations

import re

import numpy as np

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.families.blinkdl import generation
from microrwkv_jax.families.rwkv4.model import check_config
from microrwkv_jax.torch_checkpoint import ConversionError, check_state_dict, tensor_reader

BLOCK_SIZE = 1024     # RWKV-4 has no positional limit; the training window BlinkDL's models used


def rwkv4_config(vocab_size: int, n_embd: int, n_layer: int, hidden: int, block_size: int = BLOCK_SIZE) -> ModelConfig:
    if hidden % n_embd:
        raise ConversionError(f"the channel mix's width {hidden} is not a multiple of n_embd={n_embd}")
    try:
        config = ModelConfig(arch="rwkv4", vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                             n_embd=n_embd, n_head=1, n_kv_head=1, mlp_ratio=hidden // n_embd)
    except (TypeError, ValueError) as err:
        raise ConversionError(f"cannot build an RWKV-4: {err}") from None
    check_config(config)
    return config


def parameter_map(config: ModelConfig):
    """[(HF name, BlinkDL name, stored shape, our flat name, transform or None)]."""
    c, v, h = config.n_embd, config.vocab_size, config.mlp_ratio * config.n_embd
    t, flat = np.transpose, (lambda a: a.reshape(-1))
    ln = lambda hf, blink, ours: [(f"{hf}.weight", f"{blink}.weight", (c,), f"{ours}/scale", None),
                                  (f"{hf}.bias", f"{blink}.bias", (c,), f"{ours}/bias", None)]
    entries = [("rwkv.embeddings.weight", "emb.weight", (v, c), "emb/embedding", None)]
    entries += ln("rwkv.blocks.0.pre_ln", "blocks.0.ln0", "ln0")
    for i in range(config.n_layer):
        hf, bl, o = f"rwkv.blocks.{i}.", f"blocks.{i}.", f"blocks/{i}/"
        entries += ln(f"{hf}ln1", f"{bl}ln1", f"{o}ln1") + ln(f"{hf}ln2", f"{bl}ln2", f"{o}ln2")
        entries += [(f"{hf}attention.time_decay", f"{bl}att.time_decay", (c,), f"{o}att/time_decay", None),
                    (f"{hf}attention.time_first", f"{bl}att.time_first", (c,), f"{o}att/time_first", None)]
        for hf_mix, blink_mix in (("key", "k"), ("value", "v"), ("receptance", "r")):
            entries.append((f"{hf}attention.time_mix_{hf_mix}", f"{bl}att.time_mix_{blink_mix}", (1, 1, c),
                            f"{o}att/time_mix_{blink_mix}", flat))
        for name in ("key", "value", "receptance", "output"):
            entries.append((f"{hf}attention.{name}.weight", f"{bl}att.{name}.weight", (c, c), f"{o}att/{name}/kernel", t))
        for hf_mix, blink_mix in (("key", "k"), ("receptance", "r")):
            entries.append((f"{hf}feed_forward.time_mix_{hf_mix}", f"{bl}ffn.time_mix_{blink_mix}", (1, 1, c),
                            f"{o}ffn/time_mix_{blink_mix}", flat))
        entries += [(f"{hf}feed_forward.key.weight", f"{bl}ffn.key.weight", (h, c), f"{o}ffn/key/kernel", t),
                    (f"{hf}feed_forward.receptance.weight", f"{bl}ffn.receptance.weight", (c, c),
                     f"{o}ffn/receptance/kernel", t),
                    (f"{hf}feed_forward.value.weight", f"{bl}ffn.value.weight", (c, h), f"{o}ffn/value/kernel", t)]
    entries += ln("rwkv.ln_out", "ln_out", "ln_out")
    entries.append(("head.weight", "head.weight", (v, c), "head", None))
    return entries


def _params(config: ModelConfig, state_dict: dict, layout: int):
    """Check every name and shape of one layout (0: HF, 1: BlinkDL), then return our flat
    parameters as readers ({our name: () -> array}, see `tensor_reader`)."""
    table = parameter_map(config)
    expected = {entry[layout]: entry[2] for entry in table}
    check_state_dict(state_dict, expected, "RWKV-4")
    padded = {"emb/embedding", "head"}          # the vocabulary, padded to a multiple of 64 rows
    pad = config.padded_vocab_size - config.vocab_size
    return {ours: tensor_reader(state_dict[names[layout]], transform, pad if ours in padded else 0)
            for *names, _, ours, transform in table}


def read_hf_checkpoint(hf_config: dict, state_dict: dict):
    """(ModelConfig, flat params) of an RwkvForCausalLM directory's config.json and state dict."""
    try:
        c = hf_config["hidden_size"]
        if hf_config.get("attention_hidden_size", c) != c:
            raise ConversionError("config.json: attention_hidden_size differs from hidden_size; not supported")
        if hf_config.get("layer_norm_epsilon", 1e-5) != 1e-5:
            raise ConversionError(f"config.json: layer_norm_epsilon={hf_config['layer_norm_epsilon']}; only 1e-5 is supported")
        config = rwkv4_config(hf_config["vocab_size"], c, hf_config["num_hidden_layers"],
                              hf_config.get("intermediate_size") or 4 * c, hf_config.get("context_length", BLOCK_SIZE))
    except KeyError as err:
        raise ConversionError(f"config.json lacks {err}") from None
    return config, _params(config, state_dict, 0)


def recognizes_blinkdl(ckpt: dict) -> bool:
    """BlinkDL's RWKV-4 `.pth`: a bare state dict with emb.weight and blocks.N.att.time_first,
    none of the later generations' names."""
    return generation(ckpt) == "4"


def read_blinkdl_checkpoint(ckpt: dict):
    """(ModelConfig, flat params) of a BlinkDL state dict; the sizes come from its names and shapes."""
    try:
        vocab_size, n_embd = np.shape(ckpt["emb.weight"])
        n_layer = 1 + max(int(m.group(1)) for m in map(re.compile(r"blocks\.(\d+)\.att\.time_first$").match, ckpt) if m)
        hidden = np.shape(ckpt["blocks.0.ffn.key.weight"])[0]
    except (KeyError, ValueError, TypeError) as err:
        raise ConversionError(f"not an RWKV-4 state dict ({err})") from None
    config = rwkv4_config(int(vocab_size), int(n_embd), n_layer, int(hidden))
    return config, _params(config, ckpt, 1)
