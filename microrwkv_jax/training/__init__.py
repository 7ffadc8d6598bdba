"""The trainer, in parts: `train_config` (keys and checks), `optimizer`, `steps` (loss, train and
eval steps, their sharded form), `distributed`, `run` (a run's state and checkpoints) and
`loop` (what train.py runs)."""

from microrwkv_jax.training.distributed import initialize_distributed
from microrwkv_jax.training.loop import train
from microrwkv_jax.training.run import TrainingError
from microrwkv_jax.training.train_config import validate_config

__all__ = ["TrainingError", "initialize_distributed", "train", "validate_config"]
