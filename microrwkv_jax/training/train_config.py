"""The training config: which keys a run reads, and the checks it passes before any work.

Configs are `ml_collections` files with `get_config()` (see configs/tiny.py, every key
commented). `validate_config` fails on the first missing key or impossible value with a
one-line error naming it, before JAX starts or anything is written.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import math
import os
import pathlib
import tokenize

from microrwkv_jax.config import DTYPES
from microrwkv_jax.data.prepare import check_source_config
from microrwkv_jax.data.tokenizers import TOKENIZERS, is_tokenizer_file, tokenizer_vocab_size
from microrwkv_jax.families import model_config_from
from microrwkv_jax.paths import user_path, user_pattern
from microrwkv_jax.sharding import MESH_AXES

# Every key a run reads unconditionally (`compilation_cache`, `cpu_devices`, `distributed`, `keep_checkpoints`,
# `loss_chunk_elements`, `max_train_minutes`, `mesh`, `param_dtype`, `peak_flops`, `tune`, `lora_rank`,
# `lora_targets` and `valid_story_samples` are optional).
REQUIRED_KEYS = ("num_train_steps", "batch_size", "grad_accum_steps", "seed", "out_dir", "init_from", "eval_only",
                 "eval_every", "eval_batches", "log_every", "checkpoint_every", "learning_rate", "min_learning_rate",
                 "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip", "moe_aux_weight", "tokenizer",
                 "dataset", "data", "model")
TUNE_MODES = ("all", "state", "lora")   # what trains: every parameter, RWKV-5/6/7's initial WKV states, or LoRA adapters
REQUIRED_DATA_KEYS = ("num_train_stories", "num_val_stories", "story_seed", "val_fraction", "text_field",
                      "tfds_data_dir", "tfds_val_split", "cache_dir")
POSITIVE_KEYS = ("num_train_steps", "batch_size", "eval_every", "grad_accum_steps", "log_every", "checkpoint_every",
                 "keep_checkpoints", "eval_batches", "loss_chunk_elements", "cpu_devices")


def validate_config(cfg) -> None:
    """Fail before any work on a missing key or an impossible value, naming the key."""
    for key in REQUIRED_KEYS:
        if key not in cfg:
            raise ValueError(f"config: missing key {key!r}")
    for key in REQUIRED_DATA_KEYS:
        if key not in cfg.data:
            raise ValueError(f"config: missing key 'data.{key}'")
    check_source_config(cfg.data, cfg.dataset)
    for key in POSITIVE_KEYS:
        if key in cfg and cfg[key] is not None and (not isinstance(cfg[key], int) or cfg[key] < 1):
            raise ValueError(f"{key}={cfg[key]!r}: must be a positive integer")
    if cfg.batch_size % cfg.grad_accum_steps:
        raise ValueError(f"batch_size={cfg.batch_size}: must be divisible by grad_accum_steps={cfg.grad_accum_steps}")
    for key in ("learning_rate", "min_learning_rate", "weight_decay", "grad_clip"):
        if cfg[key] < 0 or not math.isfinite(cfg[key]):
            raise ValueError(f"{key}={cfg[key]!r}: must be a finite number >= 0")
    for axis, size in (cfg.get("mesh") or {}).items():
        if axis not in MESH_AXES:
            raise ValueError(f"mesh.{axis}: unknown mesh axis; expected {', '.join(MESH_AXES)}")
        if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
            raise ValueError(f"mesh.{axis}={size!r}: must be a positive integer or -1 (the rest of the devices)")
    samples = cfg.get("valid_story_samples", 0)
    if not isinstance(samples, int) or samples < 0:
        raise ValueError(f"valid_story_samples={samples!r}: must be an integer >= 0")
    if (cfg.get("tune") or "all") not in TUNE_MODES:
        raise ValueError(f"tune={cfg.tune!r}: expected one of {TUNE_MODES}")
    rank = cfg.get("lora_rank", 8)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"lora_rank={rank!r}: must be a positive integer")
    patterns = cfg.get("lora_targets", ("blocks/*",))
    if not isinstance(patterns, (tuple, list)) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"lora_targets={patterns!r}: a tuple of globs over parameter names, e.g. ('blocks/*',)")
    if cfg.warmup_steps < 0:
        raise ValueError(f"warmup_steps={cfg.warmup_steps!r}: must be >= 0")
    if not isinstance(cfg.init_from, str) or not cfg.init_from:
        raise ValueError(f"init_from={cfg.init_from!r}: 'scratch' or a checkpoint path")
    if cfg.init_from != "scratch" and not os.path.exists(cfg.init_from):
        raise ValueError(f"init_from={cfg.init_from!r}: no such checkpoint")
    if cfg.tokenizer not in TOKENIZERS and not is_tokenizer_file(cfg.tokenizer):
        raise ValueError(f"tokenizer={cfg.tokenizer!r}: unknown tokenizer; expected {', '.join(map(repr, TOKENIZERS))}, "
                         "a tokenizer.json or a World vocabulary .txt path")
    vocab_size = tokenizer_vocab_size(cfg.tokenizer)
    if cfg.init_from == "scratch":        # (from a checkpoint, the checkpoint says what the model is)
        model_config_from(cfg.model, vocab_size, backend="cpu")   # model errors surface now, before JAX starts
    elif cfg.model.get("dtype") not in (None, "auto", *DTYPES):
        raise ValueError(f"model.dtype={cfg.model.dtype!r}: expected 'auto' or one of {DTYPES}")
    param_dtype = cfg.get("param_dtype") or "float32"
    if param_dtype not in DTYPES:
        raise ValueError(f"param_dtype={param_dtype!r}: expected one of {DTYPES}")
    if param_dtype != "float32" and not (cfg.eval_only and cfg.init_from != "scratch"):
        raise ValueError(f"param_dtype={param_dtype!r}: only an evaluation of a checkpoint (eval_only=True, init_from "
                         "set) keeps lower-precision parameters; training keeps them float32")


def with_absolute_paths(cfg):
    """A copy of `cfg` whose paths (out_dir, init_from, a dataset path or glob, a tokenizer file,
    data.cache_dir, data.tfds_data_dir) are absolute, resolved against the working directory now:
    what the run records in its checkpoints and hands to orbax, which has rules of its own about
    relative paths (data.val_dataset too). Built-in names (`scratch`, `stories`, `tfds:NAME`, `byte`, `gpt2`) stay as they are."""
    cfg = cfg.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.out_dir = str(user_path(cfg.out_dir))
        if cfg.init_from != "scratch":
            cfg.init_from = str(user_path(cfg.init_from))
        if cfg.dataset != "stories" and not cfg.dataset.startswith("tfds:"):
            cfg.dataset = user_pattern(cfg.dataset)
        if is_tokenizer_file(cfg.tokenizer):
            cfg.tokenizer = str(user_path(cfg.tokenizer))
        cfg.data.cache_dir = str(user_path(cfg.data.cache_dir))
        if cfg.data.get("val_dataset"):
            cfg.data.val_dataset = user_pattern(cfg.data.val_dataset)
        if cfg.data.get("tfds_data_dir"):
            cfg.data.tfds_data_dir = str(user_path(cfg.data.tfds_data_dir))
    return cfg


# --- The config as the user sees it: train.py --help ------------------------------------------------

def load_config_file(path: str):
    """The ConfigDict that the config file `path`'s `get_config()` returns (run as train.py runs it)."""
    spec = importlib.util.spec_from_file_location("train_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def config_comments(path: str) -> dict:
    """{"data.cache_dir": its comment} from the assignments `c.KEY = ...` of a config file and of
    the `configs.*` modules it imports (the file's own comments win): the comment at the end of
    the line, or else the comment lines just above it."""
    path = pathlib.Path(path)
    comments = {}
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):           # the configs it builds on first, so that its own comments win
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("configs."):
            base = path.parent / (node.module.split(".", 1)[1].replace(".", "/") + ".py")
            if base.is_file() and base.resolve() != path.resolve():
                comments.update(config_comments(str(base)))
    lines = path.read_text().splitlines()
    trailing = {tok.start[0]: tok.string.lstrip("#").strip()       # comments after code on their line
                for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
                if tok.type == tokenize.COMMENT and tok.line[:tok.start[1]].strip()}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Attribute)):
            continue
        key = ast.unparse(node.targets[0]).split(".", 1)[-1]
        comment = trailing.get(node.lineno)
        if comment is None:             # the comment block just above the assignment
            above, row = [], node.lineno - 1
            while row >= 1 and lines[row - 1].lstrip().startswith("#"):
                above.insert(0, lines[row - 1].lstrip().lstrip("#").strip())
                row -= 1
            comment = " ".join(above) or None
        if comment:
            comments[key] = comment
    return comments


def flat_items(cfg, prefix: str = "") -> list:
    """[("data.cache_dir", value), ...] of a ConfigDict, in its order."""
    items = []
    for key, value in cfg.items():
        if hasattr(value, "items"):
            items += flat_items(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def config_help(path: str) -> str:
    """Every key of the config file `path` with its default and its comment: what train.py --help lists."""
    cfg, comments = load_config_file(path), config_comments(path)
    rows, shown_groups = [], set()
    for key, value in flat_items(cfg):
        group = key.rsplit(".", 1)[0] if "." in key else None
        if group and group not in shown_groups:
            shown_groups.add(group)
            if comments.get(group):
                rows.append(f"  {group}.*: {comments[group]}")
        comment = comments.get(key)
        rows.append(f"  --config.{key}={value!r}" + (f"\n      {comment}" if comment else ""))
    return f"config keys of {path} (override any with --config.KEY=VALUE):\n" + "\n".join(rows)
