"""What a model trained on the built-in story corpus writes: the fraction of its sampled stories
that the corpus's grammar accepts.

The validation loss says how well a model predicts held-out stories; it cannot say whether the
model writes one. Sampling does: `NUM_SAMPLES` stories at temperature 1, each from end-of-text to
the next end-of-text, are parsed by the grammar (`stories.is_story`). A story that switches its
hero's name or object midway, or does not end within `block_size` tokens, is not accepted. A
model at the entropy floor writes grammar stories every time; the published architecture, whose
loss is below the floor because it sees the future, writes few (it never learned to predict).
"""

from __future__ import annotations

import numpy as np

from microrwkv_jax.data import stories
from microrwkv_jax.sampling import generate

NUM_SAMPLES = 64
SEED = 0            # the same draws at every evaluation, so that the rate moves with the model only


def sample_stories(model, tokenizer, num_samples: int = NUM_SAMPLES, seed: int = SEED) -> list:
    """`num_samples` texts sampled at temperature 1 from end-of-text, each up to the next end-of-text;
    None for a sample that has not ended within the model's block_size tokens."""
    prompt = np.full((num_samples, 1), tokenizer.eot_id, np.int32)
    tokens = generate(model, prompt, model.config.block_size, temperature=1.0, seed=seed,
                      stop_token=tokenizer.eot_id)
    texts = []
    for row in tokens.tolist():
        texts.append(tokenizer.decode(row[:row.index(tokenizer.eot_id)]) if tokenizer.eot_id in row else None)
    return texts


def fraction_valid(texts) -> float:
    """The fraction of `texts` (None: a sample that never ended) that the grammar accepts."""
    return sum(text is not None and stories.is_story(text) for text in texts) / len(texts)


def valid_story_rate(model, tokenizer, num_samples: int = NUM_SAMPLES, seed: int = SEED) -> tuple:
    """(fraction of `sample_stories` the grammar accepts, the sampled texts)."""
    texts = sample_stories(model, tokenizer, num_samples, seed)
    return fraction_valid(texts), texts
