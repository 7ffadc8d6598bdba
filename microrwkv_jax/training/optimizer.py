"""AdamW with linear warmup and cosine decay, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

import optax

NO_DECAY_SUFFIXES = ("bias", "scale", "weight", "embedding")    # norms, biases, embeddings; time_* below


def decays(name: str) -> bool:
    """AdamW weight decay only on weight matrices: not on norms, biases, embeddings, time_* params."""
    leaf = name.rsplit("/", 1)[-1]
    return not leaf.startswith("time_") and not leaf.endswith(NO_DECAY_SUFFIXES)


def learning_rate_schedule(cfg) -> optax.Schedule:
    """0 -> learning_rate over warmup_steps, then cosine down to min_learning_rate at num_train_steps."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.num_train_steps, cfg.warmup_steps + 1), end_value=cfg.min_learning_rate)


def make_optimizer(cfg) -> optax.GradientTransformation:
    """The optimizer of flat {name: array} parameters."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
        optax.adamw(learning_rate_schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay,
                    mask=lambda params: {k: decays(k) for k in params}),
    )
