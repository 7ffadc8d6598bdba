"""What BlinkDL's RWKV generations (RWKV-4, 5, 6 and 7) share: which generation a `.pth` state
dict is (from its tensor names, as BlinkDL's `rwkv` package detects it), the language-model
shell around their blocks, and the rows of their name tables.

    tokens [B, T] -> emb -> ln0 -> L x Block -> ln_out -> head -> logits [B, T, V]

Every generation's block is `Block`: x = x + att(ln1(x)); x = x + ffn(ln2(x)), with the family's
time mix `att(x, state, shared) -> (out, state, shared)` (`shared`: what one block hands the
next, RWKV-7's layer-0 value, None for the others; `att.init_state(batch)`) and channel mix
`ffn(x, state=) -> (out, state, ...)`. The model is a recurrence: `init_state` and
`forward(tokens, state)` decode at constant cost per token.
"""

from __future__ import annotations

import re
from typing import Optional

import jax.numpy as jnp
import numpy as np
from flax import nnx

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.decoding import generate_recurrent
from microrwkv_jax.families.family import Family, TorchCheckpointFormat
from microrwkv_jax.layers.linears import STD, linear_map_param
from microrwkv_jax.layers.normalization import layer_norm
from microrwkv_jax.layers.output_head import tied_logits
from microrwkv_jax.layers.remat import blockwise
from microrwkv_jax.torch_checkpoint import ConversionError, check_state_dict, tensor_reader

LAYER = re.compile(r"blocks\.(\d+)\.")
BLOCK_SIZE = 4096    # no positional limit; the context the World models were trained with
CHUNK_SIZE = 16     # tokens per chunk of RWKV-5/6/7's chunked WKV (ops.chunked), by measurement (`bench.py wkv`)
TOKENIZER = "world"  # RWKV-5/6/7's: the RWKV World tokenizer
# Logical axes of the parameters every generation from RWKV-5 on has, for sharding (microrwkv_jax.sharding).
SHELL_AXES = {
    "emb/embedding": ("vocab", "embed"),
    "head": ("vocab", "embed"),
    "ln*/*": ("embed",),
    "blocks/*/ln*/*": ("embed",),
    "blocks/*/att/output/kernel": ("heads", "embed"),
    "blocks/*/att/ln_x/*": ("heads",),
    "blocks/*/ffn/key/kernel": ("embed", "mlp"),
    "blocks/*/ffn/value/kernel": ("mlp", "embed"),
    "blocks/*/ffn/receptance/kernel": ("embed", "embed"),
    "blocks/*/ffn/*": ("embed",),                               # token-shift mixes
    "blocks/*/att/time_state": ("heads", None, None),           # [H, N, N], state tuning
}


def world_presets(sizes: dict) -> dict:
    """{preset: ModelConfig fields} of BlinkDL World models of these {name: (layers, width)}: heads
    of 64 channels, the World tokenizer's 65,536 tokens, trained at 4,096 tokens."""
    return {name: dict(n_layer=layers, n_embd=width, n_head=width // 64, n_kv_head=1, vocab_size=65536,
                       block_size=BLOCK_SIZE, chunk_size=CHUNK_SIZE) for name, (layers, width) in sizes.items()}


def world_family(arch: str, model_class: type, forward_flops_per_token, presets: dict, param_axes: dict,
                 checkpoint_names, describe: str) -> Family:
    """The Family of an RWKV generation from RWKV-5 on: recurrent (decodes and scores a text with
    its state carried), BlinkDL's `.pth` files read by its `checkpoint_names` module
    (`recognizes`, `read_checkpoint`, `parameter_map`), the World tokenizer."""
    return Family(
        arch=arch, presets=presets, model_class=model_class, check_config=model_class.check_config,
        forward_flops_per_token=forward_flops_per_token, recurrent=True, stateful_score=lambda config: True,
        generate=generate_recurrent, describe=lambda config: describe, param_axes=param_axes,
        torch_checkpoint=TorchCheckpointFormat(recognizes=checkpoint_names.recognizes,
                                               read=checkpoint_names.read_checkpoint,
                                               parameter_map=checkpoint_names.parameter_map,
                                               default_tokenizer=TOKENIZER))


def check_heads_config(config: ModelConfig) -> None:
    """RWKV-5/6/7 have heads of N = C / H channels and no separate key/value heads."""
    if config.n_kv_head != 1:
        config.fail("n_kv_head", "RWKV-5/6/7 have no key/value heads: set n_kv_head=1")


def ffn_dim_3_5(config: ModelConfig) -> int:
    """RWKV-5/6's channel-mix width: the config's, or the World models' int(3.5 C) rounded down to 32."""
    return config.ffn_dim or int(config.n_embd * 3.5) // 32 * 32


def generation(ckpt: dict) -> Optional[str]:
    """Which BlinkDL RWKV a bare state dict is: "4", "5.0", "5.1", "5.2", "6" or "7" (None: not
    one). As BlinkDL's `rwkv` package decides: ln_x makes 5, a gate 5.1, a per-channel time_decay
    5.2, time_maa 6; RWKV-7's names (r_k, x_r) are its own."""
    if "emb.weight" not in ckpt or not any(name.startswith("blocks.") for name in ckpt):
        return None
    names = list(ckpt)
    if any(name.endswith((".att.r_k", ".att.x_r")) for name in names):
        return "7"
    if any("time_maa" in name for name in names):
        return "6"
    if any(".ln_x." in name for name in names):
        if not any("gate.weight" in name for name in names):
            return "5.0"
        decays = [np.shape(ckpt[name]) for name in names if name.endswith(".att.time_decay")]
        return "5.2" if any(len(shape) > 1 and shape[1] > 1 for shape in decays) else "5.1"
    if any(name.endswith(".att.time_first") for name in names):
        return "4"
    return None


def layer_count(ckpt: dict) -> int:
    """1 + the highest block index among the state dict's names."""
    indices = [int(m.group(1)) for m in map(LAYER.match, ckpt) if m]
    if not indices:
        raise ConversionError("the state dict has no blocks.N tensors")
    return 1 + max(indices)


def shape_of(ckpt: dict, name: str, generation_name: str) -> tuple:
    """The shape of tensor `name`, or a one-line error naming it."""
    if name not in ckpt:
        raise ConversionError(f"not a whole {generation_name} state dict: {name} is missing")
    return tuple(int(d) for d in np.shape(ckpt[name]))


def linear_rows(blink: str, ours: str, in_features: int, out_features: int):
    """The name-table row of a torch Linear weight [out, in] stored as our kernel [in, out]."""
    return (f"{blink}.weight", (out_features, in_features), f"{ours}/kernel", np.transpose)


def layer_norm_rows(blink: str, ours: str, c: int):
    return [(f"{blink}.weight", (c,), f"{ours}/scale", None), (f"{blink}.bias", (c,), f"{ours}/bias", None)]


def vector_row(blink: str, ours: str, c: int):
    """A per-channel vector BlinkDL stores as [1, 1, C] and we as [C]."""
    return (blink, (1, 1, c), ours, lambda a: a.reshape(-1))


def make_config(arch: str, check, **fields) -> ModelConfig:
    """The checked ModelConfig of a checkpoint of family `arch`, or a one-line ConversionError."""
    try:
        config = ModelConfig(arch=arch, block_size=BLOCK_SIZE, n_kv_head=1, chunk_size=CHUNK_SIZE, **fields)
        check(config)
    except (TypeError, ValueError) as err:
        raise ConversionError(f"cannot build an {arch}: {err}") from None
    return config


def shell_rows(config: ModelConfig) -> list:
    """The name-table rows of the shell: emb, ln0, ln_out, head (what every generation has)."""
    c, v = config.n_embd, config.vocab_size
    return ([("emb.weight", (v, c), "emb/embedding", None)] + layer_norm_rows("blocks.0.ln0", "ln0", c)
            + layer_norm_rows("ln_out", "ln_out", c) + [("head.weight", (v, c), "head", None)])


def block_rows(config: ModelConfig, i: int) -> list:
    """A block's ln1 and ln2 rows, and its time_state row if state-tuned."""
    return layer_norm_rows(f"blocks.{i}.ln1", f"blocks/{i}/ln1", config.n_embd) + layer_norm_rows(
        f"blocks.{i}.ln2", f"blocks/{i}/ln2", config.n_embd) + time_state_rows(config, i)


def time_mix_rows(config: ModelConfig, i: int, matrices: tuple) -> list:
    """A block's time-mix projections (C x C, in `matrices`) and its ln_x rows."""
    c, att, o = config.n_embd, f"blocks.{i}.att.", f"blocks/{i}/att/"
    return ([linear_rows(f"{att}{m}", f"{o}{m}", c, c) for m in matrices]
            + [(f"{att}ln_x.weight", (c,), f"{o}ln_x/weight", None), (f"{att}ln_x.bias", (c,), f"{o}ln_x/bias", None)])


def channel_mix_rows(config: ModelConfig, i: int, mixes: tuple, hidden: int, receptance: bool = True) -> list:
    """A block's channel-mix rows: its token-shift vectors (`mixes`, e.g. time_mix_k), key,
    value and (RWKV-4/5/6) receptance, of width `hidden`."""
    c, ffn, o = config.n_embd, f"blocks.{i}.ffn.", f"blocks/{i}/ffn/"
    rows = [vector_row(f"{ffn}{m}", f"{o}{m}", c) for m in mixes]
    rows += [linear_rows(f"{ffn}key", f"{o}key", c, hidden), linear_rows(f"{ffn}value", f"{o}value", hidden, c)]
    return rows + ([linear_rows(f"{ffn}receptance", f"{o}receptance", c, c)] if receptance else [])


def read_with_table(ckpt: dict, config: ModelConfig, table: list, model_name: str, ignored=()) -> dict:
    """Check every name and shape of `ckpt` against `table` [(BlinkDL name, stored shape, our flat
    name, transform or None)] (the names in `ignored` may be there and are not read), then return
    our flat parameters as readers, the vocabulary padded to a multiple of 64 rows."""
    check_state_dict({k: v for k, v in ckpt.items() if k not in ignored},
                     {blink: shape for blink, shape, _, _ in table}, model_name)
    pad = config.padded_vocab_size - config.vocab_size
    return {ours: tensor_reader(ckpt[blink], transform, pad if ours in ("emb/embedding", "head") else 0)
            for blink, _, ours, transform in table}


class Block(nnx.Module):
    """x = x + att(ln1(x)); x = x + ffn(ln2(x))."""

    def __init__(self, config: ModelConfig, att: nnx.Module, ffn: nnx.Module, *, rngs: nnx.Rngs):
        c, dtype = config.n_embd, jnp.dtype(config.dtype)
        self.ln1, self.ln2 = layer_norm(c, True, rngs, dtype), layer_norm(c, True, rngs, dtype)
        self.att, self.ffn = att, ffn

    def init_state(self, batch: int) -> dict:
        c = self.ln1.scale.shape[0]
        return {"att": self.att.init_state(batch), "ffn": {"shift": jnp.zeros((batch, c), jnp.float32)}}

    def __call__(self, x, state, shared=None):
        h, att_state, shared = self.att(self.ln1(x), state["att"], shared)
        x = x + h
        h, ffn_state = self.ffn(self.ln2(x), state=state["ffn"])[:2]
        return x + h, {"att": att_state, "ffn": ffn_state}, shared


def swap_key_value(a):
    """BlinkDL's time_state [H, N_value, N_key] <-> ours [H, N_key, N_value] (its own inverse)."""
    return np.swapaxes(a, -1, -2)


def time_state_rows(config: ModelConfig, i: int) -> list:
    """A state-tuned block's time_state row (none for other models)."""
    h, n = config.n_head, config.head_size
    return [(f"blocks.{i}.att.time_state", (h, n, n), f"blocks/{i}/att/time_state", swap_key_value)] \
        if config.time_state else []


def has_time_state(ckpt: dict) -> bool:
    return any(name.endswith(".att.time_state") for name in ckpt)


class RecurrentLM(nnx.Module):
    """The shell of BlinkDL's RWKV models. Subclasses set `arch`, `check_config` and
    `make_block(config, layer_id, rngs)` (a `Block`)."""

    arch: str

    @staticmethod
    def check_config(config: ModelConfig) -> None:
        raise NotImplementedError

    @staticmethod
    def make_block(config: ModelConfig, layer_id: int, rngs: nnx.Rngs) -> Block:
        raise NotImplementedError

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.arch != self.arch:
            raise ValueError(f"arch={config.arch!r}: {type(self).__name__} needs arch={self.arch!r}")
        self.check_config(config)
        self.config = config
        c, dtype = config.n_embd, jnp.dtype(config.dtype)
        self.emb = nnx.Embed(config.padded_vocab_size, c, embedding_init=nnx.initializers.normal(STD), rngs=rngs)
        self.ln0 = layer_norm(c, True, rngs, dtype)
        self.blocks = nnx.List([self.make_block(config, i, rngs) for i in range(config.n_layer)])
        self.ln_out = layer_norm(c, True, rngs, dtype)
        self.head = linear_map_param(rngs, STD, (config.padded_vocab_size, c))

    def init_state(self, batch: int, max_len: int = 0):
        """The recurrent state: a constant size whatever `max_len`."""
        return {"pos": jnp.zeros((), jnp.int32), "blocks": [block.init_state(batch) for block in self.blocks]}

    def forward(self, tokens, state=None):
        """tokens: int [B, T]; state from `init_state` or None. Returns (logits [B, T, V], state, aux)."""
        x, new_state, aux = self.features(tokens, state)
        return tied_logits(x, self.output_embedding(), self.config.vocab_size), new_state, aux

    def features(self, tokens, state=None):
        """`forward` without the head: (final hidden states [B, T, C], new state or None, aux)."""
        fresh = state is None
        if fresh:
            state = self.init_state(tokens.shape[0])
        x = self.ln0(self.emb.embedding[...][tokens].astype(jnp.dtype(self.config.dtype)))
        new_blocks, shared = [], None
        run = blockwise(lambda block, x, block_state, shared: block(x, block_state, shared), self.config.remat)
        for block, block_state in zip(self.blocks, state["blocks"]):
            x, block_state, shared = run(block, x, block_state, shared)
            new_blocks.append(block_state)
        new_state = None if fresh else {"pos": state["pos"] + tokens.shape[1], "blocks": new_blocks}
        return self.ln_out(x), new_state, {"moe_aux_loss": jnp.zeros((), jnp.float32), "expert_fraction": None}

    def output_embedding(self):
        """The untied head's matrix [padded vocab, C]."""
        return self.head[...]

    def __call__(self, tokens):
        return self.forward(tokens)[0]
