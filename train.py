#!/usr/bin/env python
"""Train a MicroRWKV model.

    python train.py --config configs/tiny.py [--config.batch_size=8 ...]

Configs are ml_collections files with `get_config()`; any key can be overridden with
--config.KEY=VALUE. See microrwkv_jax/training/ for what a run does.
"""

import sys

from absl import app, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Training configuration file.",
                                          lock_config=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)      # orbax logs every file it writes at INFO
    from microrwkv_jax import training
    cfg = _CONFIG.value
    try:
        training.validate_config(cfg)
        training.initialize_distributed(cfg)
        training.train(cfg)
    except (ValueError, OSError, training.TrainingError) as err:
        print(f"train.py: error: {str(err).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
