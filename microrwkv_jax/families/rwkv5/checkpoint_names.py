"""RWKV-5's BlinkDL `.pth` state dicts (RWKV-5-World-*.pth): one table of every tensor's name,
stored shape and our flat name. Sizes come from the shapes: C from emb, H from time_decay, the
channel mix's width from ffn.key. RWKV-5.1 files (one decay and bonus per head) read into the
same model, each head's value repeated over its channels; a bonus stored as `time_first` (its
logarithm, in older files) is exponentiated as the `rwkv` package does. RWKV-5.0 (no gate) is refused.
"""

from __future__ import annotations

import numpy as np

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.families import blinkdl
from microrwkv_jax.families.blinkdl import block_rows, channel_mix_rows, shell_rows, time_mix_rows, vector_row
from microrwkv_jax.families.rwkv5.model import check_config, ffn_dim
from microrwkv_jax.torch_checkpoint import ConversionError

NAME = "RWKV-5"


def parameter_map(config: ModelConfig, decay_shape=None, bonus: str = "time_faaaa", bonus_shape=None):
    """[(BlinkDL name, stored shape, our flat name, transform or None)]. `decay_shape`/`bonus_shape`:
    RWKV-5.1's per-head [H] (or [H, 1]) tensors, repeated over each head's channels; `bonus`
    "time_first" stores the bonus's logarithm."""
    c, h, n = config.n_embd, config.n_head, config.head_size
    per_head = lambda a: np.repeat(np.asarray(a, np.float32).reshape(h, 1), n, axis=1)
    decay = (decay_shape or (h, n), None if decay_shape is None else per_head)
    from_log = (lambda a: np.exp(np.asarray(a, np.float32))) if bonus == "time_first" else None
    widen = (lambda a: per_head(from_log(a) if from_log else a)) if bonus_shape else from_log
    table = shell_rows(config)
    for i in range(config.n_layer):
        att, o = f"blocks.{i}.att.", f"blocks/{i}/"
        table += block_rows(config, i)
        table += [vector_row(f"{att}time_mix_{m}", f"{o}att/time_mix_{m}", c) for m in "kvrg"]
        table += [(f"{att}time_decay", decay[0], f"{o}att/time_decay", decay[1]),
                  (f"{att}{bonus}", bonus_shape or (h, n), f"{o}att/time_faaaa", widen)]
        table += time_mix_rows(config, i, ("receptance", "key", "value", "gate", "output"))
        table += channel_mix_rows(config, i, ("time_mix_k", "time_mix_r"), ffn_dim(config))
    return table


def recognizes(ckpt: dict) -> bool:
    return blinkdl.generation(ckpt) in ("5.0", "5.1", "5.2")


def read_checkpoint(ckpt: dict):
    """(ModelConfig, flat params as readers) of a BlinkDL RWKV-5 state dict."""
    version = blinkdl.generation(ckpt)
    if version == "5.0":
        raise ConversionError("RWKV-5.0 checkpoints (no gate) are not supported; RWKV-5.1 and 5.2 are")
    vocab, c = blinkdl.shape_of(ckpt, "emb.weight", NAME)
    decay_shape = blinkdl.shape_of(ckpt, "blocks.0.att.time_decay", NAME)
    bonus = "time_faaaa" if "blocks.0.att.time_faaaa" in ckpt else "time_first"
    bonus_shape = blinkdl.shape_of(ckpt, f"blocks.0.att.{bonus}", NAME)
    hidden = blinkdl.shape_of(ckpt, "blocks.0.ffn.key.weight", NAME)[0]
    h = decay_shape[0]
    config = blinkdl.make_config("rwkv5", check_config, vocab_size=vocab, n_embd=c, n_head=h,
                                 n_layer=blinkdl.layer_count(ckpt), ffn_dim=hidden,
                                 time_state=blinkdl.has_time_state(ckpt))
    per_head = version == "5.1"
    table = parameter_map(config, decay_shape if per_head else None, bonus, bonus_shape if per_head else None)
    return config, blinkdl.read_with_table(ckpt, config, table, NAME)
