"""Model configuration: one validated dataclass that every model family reads.

`arch` names the family (see `microrwkv_jax.families`, the registry); each family reads the
fields it needs and checks how they fit together (`Family.check_config`). This module checks
only what holds for every family: sizes are positive integers, the width splits into heads,
the dtype is known. The named presets users train ("hybrid", "rwkv", "gpt", "published") are
declared by the families and built with `microrwkv_jax.families.model_config`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

DTYPES = ("float32", "bfloat16", "float16")
# The default block of the default (causal) family: the MicroRWKV hybrid.
HYBRID_LAYERS = ("time_mix", "channel_mix", "swa", "gqa", "moe")


def resolve_dtype(dtype: str, backend: str) -> str:
    """The compute dtype "auto" means: float32 on CPUs, bfloat16 on accelerators."""
    if dtype != "auto":
        return dtype
    return "float32" if backend == "cpu" else "bfloat16"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a MicroRWKV language model.

    Attributes:
      vocab_size: number of real tokens; the embedding is padded to a multiple of 64.
      block_size: training context length (the causal model can decode past it).
      n_layer, n_embd, n_head: depth, width C and heads H (head size N = C / H).
      n_kv_head: key/value heads of grouped-query attention; None means max(1, H // 4).
      swa_window: tokens the sliding-window attention sees, itself included.
      gqa_window: same for grouped-query attention; None means global causal attention.
      num_experts, num_active_experts, expert_dim: MoE router size, top-k and width.
      mlp_ratio: hidden width of the GPT baseline's MLP as a multiple of C.
      ffn_dim: hidden width of the RWKV-5/6/7 channel mix; None: the family's rule for the width.
      lora_dims: ranks of the RWKV-6/7 low-rank projections (RWKV-6: token-shift mix, decay;
        RWKV-7 and the causal family's time_mix7: decay, in-context learning rate, value
        residual, gate); (): the family's rule.
      time_state: RWKV-5/6/7 only: a trainable initial WKV state per layer and head (state tuning;
        BlinkDL's `time_state` tensors), the state every sequence starts from instead of zeros.
      layers: the sub-layers of each causal block, in order (default: the hybrid block).
      bias: biases on the RWKV linear layers and the final LayerNorm.
      chunk_size: tokens per chunk Q of the chunked WKV operator.
      rope_base: rotary embedding base.
      dtype: compute dtype (parameters and WKV state stay float32).
      remat: recompute each block's activations in the backward pass instead of keeping them
        (gradient checkpointing, `nnx.remat`): about one more forward pass of compute for the
        activation memory of one block; the numbers are the same.
      arch: the model family, a key of `microrwkv_jax.families.FAMILIES`.
    """

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 8
    n_embd: int = 768
    n_head: int = 8
    n_kv_head: Optional[int] = None
    swa_window: int = 256
    gqa_window: Optional[int] = None
    num_experts: int = 4
    num_active_experts: int = 2
    expert_dim: int = 512
    mlp_ratio: int = 4
    ffn_dim: Optional[int] = None
    lora_dims: tuple = ()
    time_state: bool = False
    layers: tuple = HYBRID_LAYERS
    bias: bool = False
    chunk_size: int = 64
    rope_base: float = 10000.0
    dtype: str = "float32"
    remat: bool = False
    arch: str = "causal"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "lora_dims", tuple(self.lora_dims))
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", max(1, self.n_head // 4))
        self.validate()

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // 64) * 64

    def fail(self, field: str, why: str):
        """Raise the one-line error every config check uses: "field=value: why"."""
        raise ValueError(f"{field}={getattr(self, field)!r}: {why}")

    def validate(self) -> None:
        for field in ("vocab_size", "block_size", "n_layer", "n_embd", "n_head", "n_kv_head",
                      "num_experts", "num_active_experts", "expert_dim", "mlp_ratio", "chunk_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                self.fail(field, "must be a positive integer")
        if self.ffn_dim is not None and (not isinstance(self.ffn_dim, int) or isinstance(self.ffn_dim, bool)
                                         or self.ffn_dim < 1):
            self.fail("ffn_dim", "must be None (the family's rule) or a positive integer")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in self.lora_dims):
            self.fail("lora_dims", "must be positive integers")
        if not isinstance(self.time_state, bool):
            self.fail("time_state", "must be True or False")
        if not isinstance(self.remat, bool):
            self.fail("remat", "must be True or False")
        if self.n_embd % self.n_head:
            self.fail("n_embd", f"must be divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            self.fail("n_kv_head", f"must divide n_head={self.n_head}")
        if not isinstance(self.swa_window, int) or self.swa_window < 1:
            self.fail("swa_window", "must be a positive integer")
        if self.gqa_window is not None and (not isinstance(self.gqa_window, int) or self.gqa_window < 1):
            self.fail("gqa_window", "must be None (global) or a positive integer")
        if self.num_active_experts > self.num_experts:
            self.fail("num_active_experts", f"must be <= num_experts={self.num_experts}")
        if self.rope_base <= 1:
            self.fail("rope_base", "must be > 1")
        if self.dtype not in DTYPES:
            self.fail("dtype", f"expected one of {DTYPES}")
        if not isinstance(self.arch, str) or not self.arch:
            self.fail("arch", "must name a model family")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        d["lora_dims"] = list(self.lora_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config: unknown keys {unknown}")
        return cls(**d)
