"""AdamW with linear warmup and cosine decay, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

from typing import Collection

import optax


def learning_rate_schedule(cfg) -> optax.Schedule:
    """0 -> learning_rate over warmup_steps, then cosine down to min_learning_rate at num_train_steps."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.num_train_steps, cfg.warmup_steps + 1), end_value=cfg.min_learning_rate)


def make_optimizer(cfg, linear_maps: Collection[str]) -> optax.GradientTransformation:
    """The optimizer of flat {name: array} parameters. Weight decay applies to the parameters named
    in `linear_maps` (`ParamCodec.linear_maps`: the matrices of linear maps, as the layers mark
    them) and to nothing else: not to biases, norms, embeddings or RWKV's time_* vectors."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
        optax.adamw(learning_rate_schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay,
                    mask=lambda params: {name: name in linear_maps for name in params}),
    )
