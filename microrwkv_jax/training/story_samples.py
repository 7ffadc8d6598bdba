"""What a model trained on the built-in story corpus writes: the fraction of its sampled stories
that the corpus's grammar accepts.

    python -m microrwkv_jax.training.story_samples out [--num_samples 64] [--show 3]

The validation loss says how well a model predicts held-out stories; it cannot say whether the
model writes one. Sampling does: `NUM_SAMPLES` stories at temperature 1, each from end-of-text to
the next end-of-text, are parsed by the grammar (`stories.is_story`). A story that switches its
hero's name or object midway, or does not end within `block_size` tokens, is not accepted. A
model at the entropy floor writes grammar stories every time. (The published architecture's loss
is below the floor because it sees the future; its rate is what says whether it can write.)
"""

from __future__ import annotations

import argparse
import sys

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


def main(argv=None) -> int:
    """Score any checkpoint (run dir, converted dir, .pth): its valid-story rate, and a few samples.
    For the published architecture this takes minutes: it has no recurrent sampler."""
    p = argparse.ArgumentParser(prog="python -m microrwkv_jax.training.story_samples",
                                description=main.__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--num_samples", type=int, default=NUM_SAMPLES)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--show", type=int, default=3, help="samples to print")
    args = p.parse_args(argv)
    if args.num_samples < 1:
        print(f"story_samples: error: --num_samples={args.num_samples}: must be >= 1", file=sys.stderr)
        return 1
    from microrwkv_jax.compilation_cache import enable_compilation_cache
    from microrwkv_jax.loading import load_model_and_tokenizer
    enable_compilation_cache()
    try:
        model, _, tokenizer = load_model_and_tokenizer(args.checkpoint)
    except (ValueError, OSError, KeyError) as err:
        print(f"story_samples: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    rate, texts = valid_story_rate(model, tokenizer, args.num_samples, args.seed)
    for text in texts[:args.show]:
        print(("(no end-of-text within block_size)" if text is None else text) + "\n")
    print(f"valid stories: {round(rate * args.num_samples)}/{args.num_samples} ({rate:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
