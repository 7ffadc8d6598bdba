"""RWKV-7's BlinkDL `.pth` state dicts (RWKV-x070-*.pth): one table of every tensor's name, stored
shape and our flat name. Sizes come from the shapes: C from emb, H and N from r_k, the LoRA
ranks from w1, a1, v1 (of layer 1) and g1, the channel mix's width from ffn.key. Layer 0's
v0/v1/v2, which BlinkDL's files carry and its package ignores (layer 0's value is the one the
others mix in), are not read. DeepEmbed files (ffn.s_emb) are refused.
"""

from __future__ import annotations

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.families import blinkdl
from microrwkv_jax.families.blinkdl import block_rows, channel_mix_rows, shell_rows, time_mix_rows, vector_row
from microrwkv_jax.families.rwkv7.model import check_config, ffn_dim, lora_dims
from microrwkv_jax.layers.rwkv7 import MIXES
from microrwkv_jax.torch_checkpoint import ConversionError

NAME = "RWKV-7"
LAYER0_UNUSED = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def parameter_map(config: ModelConfig):
    """[(BlinkDL name, stored shape, our flat name, transform or None)]."""
    c, h, n = config.n_embd, config.n_head, config.head_size
    d_w, d_a, d_v, d_g = lora_dims(config)
    table = shell_rows(config)
    for i in range(config.n_layer):
        att, o = f"blocks.{i}.att.", f"blocks/{i}/att/"
        table += block_rows(config, i)
        table += [vector_row(f"{att}x_{m}", f"{o}x_{m}", c) for m in MIXES]
        loras = [("w", d_w), ("a", d_a)] + ([("v", d_v)] if i > 0 else []) + [("g", d_g)]
        for name, rank in loras:
            if name != "g":
                table.append(vector_row(f"{att}{name}0", f"{o}{name}0", c))
            table += [(f"{att}{name}1", (c, rank), f"{o}{name}1", None),
                      (f"{att}{name}2", (rank, c), f"{o}{name}2", None)]
        table += [vector_row(f"{att}k_k", f"{o}k_k", c), vector_row(f"{att}k_a", f"{o}k_a", c),
                  (f"{att}r_k", (h, n), f"{o}r_k", None)]
        table += time_mix_rows(config, i, ("receptance", "key", "value", "output"))
        table += channel_mix_rows(config, i, ("x_k",), ffn_dim(config), receptance=False)
    return table


def recognizes(ckpt: dict) -> bool:
    return blinkdl.generation(ckpt) == "7"


def read_checkpoint(ckpt: dict):
    """(ModelConfig, flat params as readers) of a BlinkDL RWKV-7 state dict."""
    if any(".ffn.s_emb" in name for name in ckpt):
        raise ConversionError("RWKV-7 DeepEmbed checkpoints (ffn.s_emb) are not supported")
    vocab, c = blinkdl.shape_of(ckpt, "emb.weight", NAME)
    h, n = blinkdl.shape_of(ckpt, "blocks.0.att.r_k", NAME)
    n_layer = blinkdl.layer_count(ckpt)
    v1 = "blocks.1.att.v1" if n_layer > 1 else "blocks.0.att.v1"
    ranks = [blinkdl.shape_of(ckpt, f"blocks.0.att.{m}1", NAME)[1] for m in "wa"]
    ranks.append(blinkdl.shape_of(ckpt, v1, NAME)[1] if v1 in ckpt or n_layer > 1 else 32)
    ranks.append(blinkdl.shape_of(ckpt, "blocks.0.att.g1", NAME)[1])
    hidden = blinkdl.shape_of(ckpt, "blocks.0.ffn.key.weight", NAME)[0]
    config = blinkdl.make_config("rwkv7", check_config, vocab_size=vocab, n_embd=c, n_head=h, n_layer=n_layer,
                                 ffn_dim=hidden, lora_dims=tuple(ranks),
                                 time_state=blinkdl.has_time_state(ckpt))
    if config.head_size != n:
        raise ConversionError(f"blocks.0.att.r_k {(h, n)}: H x N must equal the width {c}")
    return config, blinkdl.read_with_table(ckpt, config, parameter_map(config), NAME, ignored=LAYER0_UNUSED)
