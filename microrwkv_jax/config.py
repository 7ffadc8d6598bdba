"""Model configuration: one validated dataclass for every model family.

`layers` names the residual sub-layers of each block, in order. The three families
this project trains are presets of it:

| family   | layers                                                   |
| -------- | -------------------------------------------------------- |
| hybrid   | time_mix, channel_mix, swa, gqa, moe  (the default)      |
| rwkv     | time_mix, channel_mix                 (nanoRWKV x051a)   |
| gpt      | gqa, mlp                              (GPT baseline)     |

`arch="published"` selects the bit-faithful model of the published PyTorch checkpoints
(`microrwkv_jax.published`); it ignores `layers`, `n_kv_head`, the windows and `rope_base`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

SUBLAYERS = ("time_mix", "channel_mix", "swa", "gqa", "moe", "mlp")
FAMILIES = {
    "hybrid": ("time_mix", "channel_mix", "swa", "gqa", "moe"),
    "rwkv": ("time_mix", "channel_mix"),
    "gpt": ("gqa", "mlp"),
}
ARCHS = ("causal", "published")
DTYPES = ("float32", "bfloat16", "float16")


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
      num_experts, num_active_experts, expert_dim: TinyMoE router size, top-k and width.
      mlp_ratio: hidden width of the GPT baseline's MLP as a multiple of C.
      layers: the sub-layers of each block, in order (see module docstring).
      bias: biases on the RWKV linear layers and the final LayerNorm.
      chunk_size: tokens per chunk Q of the chunked WKV operator.
      rope_base: rotary embedding base.
      dtype: compute dtype (parameters and WKV state stay float32).
      arch: "causal" (this project's model) or "published" (checkpoint-compatible).
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
    layers: tuple = FAMILIES["hybrid"]
    bias: bool = False
    chunk_size: int = 64
    rope_base: float = 10000.0
    dtype: str = "float32"
    arch: str = "causal"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", max(1, self.n_head // 4))
        self.validate()

    @classmethod
    def family(cls, name: str, **overrides) -> "ModelConfig":
        """A config of one of the FAMILIES ("hybrid", "rwkv", "gpt") with overrides."""
        if name not in FAMILIES:
            raise ValueError(f"family: unknown model family {name!r}; expected one of {sorted(FAMILIES)}")
        return cls(layers=FAMILIES[name], **overrides)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // 64) * 64

    def validate(self) -> None:
        def fail(field, why):
            raise ValueError(f"{field}={getattr(self, field)!r}: {why}")

        for field in ("vocab_size", "block_size", "n_layer", "n_embd", "n_head", "n_kv_head",
                      "num_experts", "num_active_experts", "expert_dim", "mlp_ratio", "chunk_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(field, "must be a positive integer")
        if self.n_embd % self.n_head:
            fail("n_embd", f"must be divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            fail("n_kv_head", f"must divide n_head={self.n_head}")
        if not isinstance(self.swa_window, int) or self.swa_window < 1:
            fail("swa_window", "must be a positive integer")
        if self.gqa_window is not None and (not isinstance(self.gqa_window, int) or self.gqa_window < 1):
            fail("gqa_window", "must be None (global) or a positive integer")
        if self.num_active_experts > self.num_experts:
            fail("num_active_experts", f"must be <= num_experts={self.num_experts}")
        if not self.layers:
            fail("layers", "must name at least one sub-layer")
        for name in self.layers:
            if name not in SUBLAYERS:
                fail("layers", f"unknown sub-layer {name!r}; expected names from {SUBLAYERS}")
        if len(set(self.layers)) != len(self.layers):
            fail("layers", "names a sub-layer twice")
        if self.rope_base <= 1:
            fail("rope_base", "must be > 1")
        if self.dtype not in DTYPES:
            fail("dtype", f"expected one of {DTYPES}")
        if self.arch not in ARCHS:
            fail("arch", f"expected one of {ARCHS}")
        if self.arch == "published":
            if self.n_embd % (4 * self.n_head):
                fail("n_embd", f"the published GQA needs n_embd divisible by 4 * n_head = {4 * self.n_head}")
            if self.n_layer < 2 or self.n_head < 2:
                fail("n_layer" if self.n_layer < 2 else "n_head",
                     "the published initialisation divides by n_layer - 1 and n_head - 1; use >= 2")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config: unknown keys {unknown}")
        return cls(**d)
