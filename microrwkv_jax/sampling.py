"""Text generation, for every model family.

Each family says how it generates (`Family.generate`): causal models decode recurrently at
constant cost per token (`microrwkv_jax.decoding`); the published architecture is not causal
and reruns its whole (cropped) context for every token, as its original sampler does.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from microrwkv_jax.families import get_family


def generate(model, prompt, max_new_tokens: int, *, temperature: float = 1.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None, seed: int = 0, stop_token: Optional[int] = None,
             on_tokens: Optional[Callable[[np.ndarray], None]] = None, block: int = 16) -> np.ndarray:
    """Continue each row of `prompt` (int [B, T], T >= 1) by `max_new_tokens` tokens.

    temperature 0 is greedy; top_k / top_p restrict sampling; row i samples with seed + i.
    With `stop_token`, a row stops at that token (it is included, then repeated as padding) and
    generation ends when every row has stopped. `on_tokens(tokens [B, n])` receives each newly
    generated block (of up to `block` tokens), for streaming. Returns the new tokens, int32
    [B, max_new_tokens] (fewer columns if every row stopped early).
    """
    prompt = np.asarray(prompt, np.int32)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt: expected int tokens [B, T] with T >= 1, got shape {prompt.shape}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    return get_family(model.config.arch).generate(model, prompt, max_new_tokens, temperature, top_k, top_p, seed,
                                                  stop_token, on_tokens, block)
