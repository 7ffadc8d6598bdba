"""What a model family declares, in one place, for the rest of the library.

The registry (`microrwkv_jax.families`) maps each `ModelConfig.arch` to one `Family`. The
trainer, the sampler, checkpoint loading, conversion and the benchmarks ask it, never the
family's modules directly, so a new family is one subpackage plus one line in the registry.

A checkpoint format's `read` gets the checkpoint with its tensors unread (`LazyTensor`s), checks
every name and shape, and returns the parameters as readers: {our flat name: a function of no
arguments returning the array} (`torch_checkpoint.tensor_reader`), which the loader calls one at a
time (`checkpoints.materialise_params`), so that a checkpoint is never in memory twice.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional

from microrwkv_jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class TorchCheckpointFormat:
    """How a family's PyTorch `.pth` checkpoints map onto its parameters (names, shapes, config)."""

    recognizes: Callable[[dict], bool]                      # does this checkpoint dict hold one of ours?
    read: Callable[[dict], tuple]                           # checkpoint dict -> (ModelConfig, {name: reader})
    parameter_map: Callable[[ModelConfig], list]            # [(torch name, torch shape, our name, transform)]
    default_tokenizer: Optional[str] = "gpt2"               # None: the checkpoint does not say


@dataclasses.dataclass(frozen=True)
class HFCheckpointFormat:
    """How a family's Hugging Face model directories (config.json + weights) map onto its parameters."""

    model_type: str                                         # config.json's "model_type"
    read: Callable[[dict, dict], tuple]                     # (config.json, state dict) -> (ModelConfig, {name: reader})
    parameter_map: Callable[[ModelConfig], list]            # [(state-dict name, shape, our name)]
    default_tokenizer: Optional[str] = "gpt2"               # without a tokenizer.json beside; None: unknown


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family.

    arch:           the `ModelConfig.arch` value that selects it
    presets:        named configs users train: {preset name: ModelConfig field overrides}
    model_class:    the nnx.Module; `model_class(config, rngs=...)`, with `forward(tokens, state)`
                    -> (logits, state, aux), `features(tokens, state)` -> (hidden, state, aux),
                    and `output_embedding()`, the output head's matrix [padded vocab, C]
    check_config:   raises ValueError("field=value: why") on a config the family cannot build
    forward_flops_per_token: (config, seq_len) -> model FLOPs of one token's forward pass
    recurrent:      True: decodes with a constant-size state (`model.init_state`, then
                    `forward(tokens, state)`); False: reruns its window for every token
    stateful_score: (config) -> True where the model's state has a constant size and no position
                    (no attention): a held-out text is scored carrying it through the whole text;
                    otherwise in overlapping windows (`microrwkv_jax.training.scoring`)
    generate:       (model, prompt [B, T], max_new_tokens, temperature, top_k, top_p, seed,
                    stop_token, on_tokens, block) -> new tokens [B, <= max_new_tokens]
    describe:       (config) -> a short phrase for logs, e.g. "causal ['time_mix', ...]"
    torch_checkpoint: how its PyTorch `.pth` checkpoints convert, or None
    hf_checkpoint:  how its Hugging Face model directories convert, or None
    param_axes:     what each parameter's axes are, for sharding (`microrwkv_jax.sharding`):
                    {glob of flat parameter names: one logical axis name per axis}, the first
                    matching glob wins; every parameter of every preset must match one (a test checks)
    """

    arch: str
    presets: Mapping[str, Mapping]
    model_class: type
    check_config: Callable[[ModelConfig], None]
    forward_flops_per_token: Callable[[ModelConfig, int], float]
    recurrent: bool
    generate: Callable
    describe: Callable[[ModelConfig], str]
    torch_checkpoint: Optional[TorchCheckpointFormat] = None
    hf_checkpoint: Optional[HFCheckpointFormat] = None
    param_axes: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
    stateful_score: Callable[[ModelConfig], bool] = lambda config: False
