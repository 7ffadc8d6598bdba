"""The trainer, in parts: `train_config` (keys and checks), `optimizer`, `steps` (loss, train and
eval steps, their sharded form), `distributed`, `run` (a run's state and checkpoints),
`story_samples` (the valid-story rate) and `loop` (what train.py runs).

The names below are imported on first use, so that `python -m microrwkv_jax.training.story_samples`
does not import its own module twice (runpy warns when a package pre-imports the module it runs).
"""

import importlib

_EXPORTS = {"TrainingError": "run", "initialize_distributed": "distributed", "train": "loop",
            "validate_config": "train_config"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
