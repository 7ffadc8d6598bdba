"""RWKV-6's BlinkDL `.pth` state dicts (RWKV-x060-World-*.pth): one table of every tensor's name,
stored shape and our flat name. Sizes come from the shapes: C from emb, H from time_faaaa, the
LoRA ranks from time_maa_w2 and time_decay_w1, the channel mix's width from ffn.key. The LoRA
matrices keep BlinkDL's layout ([C, 5 D], [5, D, C], [C, D], [D, C]: they multiply from the right).
"""

from __future__ import annotations

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.families import blinkdl
from microrwkv_jax.families.blinkdl import block_rows, channel_mix_rows, shell_rows, time_mix_rows, vector_row
from microrwkv_jax.families.rwkv6.model import check_config, ffn_dim, lora_dims

NAME = "RWKV-6"


def parameter_map(config: ModelConfig):
    """[(BlinkDL name, stored shape, our flat name, transform or None)]."""
    c, h, n = config.n_embd, config.n_head, config.head_size
    mix, decay = lora_dims(config)
    table = shell_rows(config)
    for i in range(config.n_layer):
        att, o = f"blocks.{i}.att.", f"blocks/{i}/"
        table += block_rows(config, i)
        table += [vector_row(f"{att}time_maa_{m}", f"{o}att/time_maa_{m}", c) for m in "xwkvrg"]
        table += [(f"{att}time_maa_w1", (c, 5 * mix), f"{o}att/time_maa_w1", None),
                  (f"{att}time_maa_w2", (5, mix, c), f"{o}att/time_maa_w2", None),
                  vector_row(f"{att}time_decay", f"{o}att/time_decay", c),
                  (f"{att}time_decay_w1", (c, decay), f"{o}att/time_decay_w1", None),
                  (f"{att}time_decay_w2", (decay, c), f"{o}att/time_decay_w2", None),
                  (f"{att}time_faaaa", (h, n), f"{o}att/time_faaaa", None)]
        table += time_mix_rows(config, i, ("receptance", "key", "value", "gate", "output"))
        table += channel_mix_rows(config, i, ("time_maa_k", "time_maa_r"), ffn_dim(config))
    return table


def recognizes(ckpt: dict) -> bool:
    return blinkdl.generation(ckpt) == "6"


def read_checkpoint(ckpt: dict):
    """(ModelConfig, flat params as readers) of a BlinkDL RWKV-6 state dict."""
    vocab, c = blinkdl.shape_of(ckpt, "emb.weight", NAME)
    h = blinkdl.shape_of(ckpt, "blocks.0.att.time_faaaa", NAME)[0]
    mix = blinkdl.shape_of(ckpt, "blocks.0.att.time_maa_w2", NAME)[1]
    decay = blinkdl.shape_of(ckpt, "blocks.0.att.time_decay_w1", NAME)[1]
    hidden = blinkdl.shape_of(ckpt, "blocks.0.ffn.key.weight", NAME)[0]
    config = blinkdl.make_config("rwkv6", check_config, vocab_size=vocab, n_embd=c, n_head=h,
                                 n_layer=blinkdl.layer_count(ckpt), ffn_dim=hidden, lora_dims=(mix, decay),
                                 time_state=blinkdl.has_time_state(ckpt))
    return config, blinkdl.read_with_table(ckpt, config, parameter_map(config), NAME)
