"""AdamW with linear warmup and cosine decay, global-norm clipping and a weight-decay mask.

The learning rate is not part of the compiled step's optimizer: the trainer computes it on the
host for every step (`learning_rate_at`) and passes it in, so that the schedule can follow the
wall clock (`max_train_minutes`: the rate reaches its minimum when the time budget ends) as well
as the step count, without recompiling. The optimizer itself has a unit learning rate (a
schedule returning 1, which keeps the optimizer state's layout that of a scheduled AdamW).
"""

from __future__ import annotations

import math
from typing import Collection, Optional

import optax

from microrwkv_jax.training.lora import is_adapter


def learning_rate_at(cfg, step: int, elapsed_seconds: Optional[float] = None) -> float:
    """The learning rate of step `step` (0-based): 0 -> learning_rate linearly over warmup_steps,
    then a cosine down to min_learning_rate, reached at num_train_steps or, with
    `max_train_minutes`, when `elapsed_seconds` of training reach the budget, whichever comes first."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * step / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.num_train_steps - cfg.warmup_steps, 1)
    budget = cfg.get("max_train_minutes")
    if budget and elapsed_seconds is not None:
        progress = max(progress, elapsed_seconds / (60 * budget))
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.min_learning_rate + (cfg.learning_rate - cfg.min_learning_rate) * cosine


def trains(cfg, name: str) -> bool:
    """Whether parameter `name` trains under `cfg.tune`: every one ("all"), only the RWKV-5/6/7
    initial WKV states ("state": state tuning) or only the LoRA adapters ("lora"); the rest is frozen."""
    tune = cfg.get("tune") or "all"
    return tune == "all" or (name.endswith("/att/time_state") if tune == "state" else is_adapter(name))


def make_optimizer(cfg, linear_maps: Collection[str]) -> optax.GradientTransformation:
    """The optimizer of flat {name: array} parameters, at unit learning rate (the train step
    scales its update by `learning_rate_at`'s value). Weight decay applies to the parameters named
    in `linear_maps` (`ParamCodec.linear_maps`: the matrices of linear maps, as the layers mark
    them) and to nothing else: not to biases, norms, embeddings or RWKV's time_* vectors. With
    `tune` other than "all", the frozen parameters' updates are zeros and they get no optimizer
    state (`optax.multi_transform`); clipping sees the trained parameters' gradients only."""
    adamw = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
        optax.adamw(lambda count: 1.0, b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay,
                    mask=lambda params: {name: name in linear_maps for name in params}),
    )
    if (cfg.get("tune") or "all") == "all":
        return adamw
    return optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()},
                                 lambda params: {name: "train" if trains(cfg, name) else "freeze" for name in params})
