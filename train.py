#!/usr/bin/env python
"""Train a MicroRWKV model.

    python train.py --config configs/tiny.py [--config.batch_size=8 ...]

Configs are ml_collections files with `get_config()`; any key can be overridden with
--config.KEY=VALUE. See microrwkv_jax/training/ for what a run does.
"""

import time

STARTED = time.time()     # the command's start, for the time to the first training step

import difflib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Training configuration file.",
                                          lock_config=True)


def fail(message: str):
    print(f"train.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def config_path(argv) -> str:
    path = "configs/tiny.py"
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
    return path


def unknown_override(argv) -> str:
    """The first --config.PATH=VALUE whose PATH the config file lacks, and the nearest key it has."""
    from microrwkv_jax.training.train_config import load_config_file
    path = config_path(argv)
    cfg = load_config_file(path)
    for arg in argv:
        if not arg.startswith("--config.") or "=" not in arg:
            continue
        node, keys = cfg, arg[len("--config."):].split("=", 1)[0].split(".")
        for depth, key in enumerate(keys):
            if not hasattr(node, "keys") or key not in node:
                parent = ".".join(keys[:depth])
                nearest = difflib.get_close_matches(key, list(node.keys()) if hasattr(node, "keys") else [], 1, 0.0)
                hint = f"; did you mean {'.'.join(filter(None, [parent, nearest[0]]))!r}?" if nearest else ""
                return f"--config.{'.'.join(keys)}: {path} has no key {'.'.join(keys[:depth + 1])!r}{hint}"
            node = node[key]
    return "a --config override names a key the config does not have"


def parse_flags(argv):
    """absl's flag parsing, with every failure turned into one line; --help lists the config's keys."""
    if not os.path.isfile(config_path(argv)):
        fail(f"--config={config_path(argv)}: no such file")
    if "--help" in argv[1:] or "-h" in argv[1:]:
        from microrwkv_jax.training.train_config import config_help
        print(__doc__.strip() + "\n\n" + config_help(config_path(argv)))
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        fail(str(err).splitlines()[0])
    except (KeyError, AttributeError):       # ml_collections: an override of a key the config lacks
        fail(unknown_override(argv))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)      # orbax logs every file it writes at INFO
    from microrwkv_jax import training
    try:
        cfg = _CONFIG.value
        training.validate_config(cfg)
        if cfg.get("cpu_devices"):
            from microrwkv_jax.sharding import split_cpu_devices
            split_cpu_devices(cfg.cpu_devices)       # before JAX starts: one device per core
        if (cfg.get("param_dtype") or "float32") != "float32":
            from microrwkv_jax.loading import use_lean_cpu_scheduler
            use_lean_cpu_scheduler()         # before JAX starts: convert each weight only when used
        if cfg.get("compilation_cache", True):
            from microrwkv_jax.compilation_cache import enable_compilation_cache
            enable_compilation_cache()
        training.initialize_distributed(cfg)
        training.train(cfg, started=STARTED, config_file=config_path(sys.argv))
    except (ValueError, OSError, training.TrainingError) as err:
        fail(str(err).splitlines()[0])
    except RuntimeError as err:      # jax's XlaRuntimeError: out of device memory, above all
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        fail("out of device memory: lower batch_size (or raise grad_accum_steps), block_size or the model's size")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
