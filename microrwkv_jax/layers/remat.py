"""Gradient checkpointing of a model's blocks (`ModelConfig.remat`): memory for compute."""

from __future__ import annotations

from flax import nnx


def blockwise(call, remat: bool):
    """`call(block, *inputs)` as it is, or under `nnx.remat`: then the backward pass keeps only
    each block's inputs and recomputes the block's activations from them (one more forward pass
    of compute; activation memory of one block instead of all of them)."""
    return nnx.remat(call) if remat else call
