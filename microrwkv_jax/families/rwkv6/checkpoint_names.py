"""RWKV-6's BlinkDL `.pth` state dicts (RWKV-x060-World-*.pth): one table of every tensor's name,
stored shape and our flat name. Sizes come from the shapes: C from emb, H from time_faaaa, the
LoRA ranks from time_maa_w2 and time_decay_w1, the channel mix's width from ffn.key. The LoRA
matrices keep BlinkDL's layout ([C, 5 D], [5, D, C], [C, D], [D, C]: they multiply from the right).
"""

from __future__ import annotations

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.families import blinkdl
from microrwkv_jax.families.blinkdl import block_rows, linear_rows, shell_rows, vector_row
from microrwkv_jax.families.rwkv6.model import check_config, lora_dims

NAME = "RWKV-6"


def parameter_map(config: ModelConfig):
    """[(BlinkDL name, stored shape, our flat name, transform or None)]."""
    c, h, n, hidden = config.n_embd, config.n_head, config.head_size, config.ffn_dim
    mix, decay = lora_dims(config)
    table = shell_rows(config)
    for i in range(config.n_layer):
        att, ffn, o = f"blocks.{i}.att.", f"blocks.{i}.ffn.", f"blocks/{i}/"
        table += block_rows(config, i)
        table += [vector_row(f"{att}time_maa_{m}", f"{o}att/time_maa_{m}", c) for m in "xwkvrg"]
        table += [(f"{att}time_maa_w1", (c, 5 * mix), f"{o}att/time_maa_w1", None),
                  (f"{att}time_maa_w2", (5, mix, c), f"{o}att/time_maa_w2", None),
                  vector_row(f"{att}time_decay", f"{o}att/time_decay", c),
                  (f"{att}time_decay_w1", (c, decay), f"{o}att/time_decay_w1", None),
                  (f"{att}time_decay_w2", (decay, c), f"{o}att/time_decay_w2", None),
                  (f"{att}time_faaaa", (h, n), f"{o}att/time_faaaa", None)]
        table += [linear_rows(f"{att}{m}", f"{o}att/{m}", c, c) for m in ("receptance", "key", "value", "gate", "output")]
        table += [(f"{att}ln_x.weight", (c,), f"{o}att/ln_x/weight", None), (f"{att}ln_x.bias", (c,), f"{o}att/ln_x/bias", None)]
        table += [vector_row(f"{ffn}time_maa_{m}", f"{o}ffn/time_maa_{m}", c) for m in "kr"]
        table += [linear_rows(f"{ffn}key", f"{o}ffn/key", c, hidden), linear_rows(f"{ffn}receptance", f"{o}ffn/receptance", c, c),
                  linear_rows(f"{ffn}value", f"{o}ffn/value", hidden, c)]
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
                                 n_layer=blinkdl.layer_count(ckpt), ffn_dim=hidden, lora_dims=(mix, decay))
    return config, blinkdl.read_with_table(ckpt, config, parameter_map(config), NAME)
