"""Checkpoints on disk: model directories and training runs' checkpoints.

A model directory (what `convert_torch_ckpt.py` writes) holds
    config.json                 {"model": ModelConfig fields, "tokenizer": name, ...metadata}
    params/                     an orbax checkpoint of the parameters, a flat {"a/b/c": array} dict
    .microrwkv-model-dir        the marker: only a directory that has it may be replaced (force)
It is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written directory under the final name.

A training run directory holds `checkpoints/STEP/{params, opt_state, meta}`, kept by an
orbax CheckpointManager (the last few steps and the best by validation loss).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.families import abstract_model, config_from_dict
from microrwkv_jax.paths import shown_path, user_path
from microrwkv_jax.sharding import host_device

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
MARKER_FILE = ".microrwkv-model-dir"
RUN_ITEMS = ("params", "opt_state", "meta")


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files are missing, truncated or fail their checksums; the message is one line."""


# --- Checksums ---------------------------------------------------------------------------------------

def tree_checksums(tree) -> dict:
    """{path: sha256 of the array's dtype, shape and bytes} for every array leaf of a pytree (a flat
    parameter dict, an optimizer state), computed on the host from the whole array, so that it
    does not depend on how the array is sharded. An array split across several processes is
    gathered one at a time (every process must call this, in the same order)."""
    from jax.experimental import multihost_utils

    sums = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable and not leaf.is_fully_replicated:
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        digest = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.reshape(-1).view(np.uint8) if a.size else b"")
        sums[jax.tree_util.keystr(path)] = digest.hexdigest()
    return sums


def verify_checksums(tree, expected: dict, where: str) -> None:
    """Raise CorruptCheckpointError naming the first array of `tree` whose checksum differs from `expected`."""
    actual = tree_checksums(tree)
    if actual.keys() != expected.keys():
        raise CorruptCheckpointError(f"{where}: holds other arrays than its checksums name")
    for name, digest in expected.items():
        if actual[name] != digest:
            raise CorruptCheckpointError(f"{where}: {name} fails its checksum (the file is corrupt)")


def _ignore_closed_event_loop() -> None:
    """After a failed restore, orbax/tensorstore callbacks still pending at interpreter exit find
    their asyncio loop closed and print a traceback that says nothing about the checkpoint (the
    error was already raised, in one line): drop exactly that one."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook


# Errors that say our own code is wrong, not the files: never reported as a corrupt checkpoint.
CODE_ERRORS = (TypeError, AttributeError, NameError, AssertionError, ImportError)


def unreadable(where, err: BaseException) -> CorruptCheckpointError:
    """The one-line error for checkpoint files orbax cannot read (missing, truncated, corrupt).
    An error of our own code (CODE_ERRORS) is raised as it is instead: "unreadable checkpoint" is
    said only of files."""
    if isinstance(err, CODE_ERRORS):
        raise err
    _ignore_closed_event_loop()
    return CorruptCheckpointError(f"{shown_path(where)}: unreadable checkpoint ({first_line(err)})")


@contextlib.contextmanager
def quiet_orbax():
    """Silence orbax's absl WARNING lines for reads, which say nothing a user can act on
    ("CheckpointManagerOptions.read_only=True, setting save_interval_steps=0", "Given directory
    is read only", no step metadata); errors still surface."""
    from absl import logging as absl_logging
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(verbosity)


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__


# --- Parameters as a flat dict -------------------------------------------------------------------

class ParamCodec:
    """Converts between a model and a flat {"blocks/0/time_mix/key/kernel": array} parameter dict.

    The flat dict is what training optimises, what orbax saves and what conversion fills in;
    `model(flat)` is cheap and traceable, so a jitted loss can rebuild the module from it.
    `linear_maps` names the parameters that are matrices of linear maps (the layers mark them).
    """

    def __init__(self, model):
        self.graphdef, state = nnx.split(model, nnx.Param)
        leaves, self.treedef = jax.tree_util.tree_flatten_with_path(state)
        self.names = ["/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
                      for path, _ in leaves]
        self.shapes = {n: tuple(leaf.shape) for n, (_, leaf) in zip(self.names, leaves)}
        self.linear_maps = frozenset("/".join(map(str, path)) for path, variable in nnx.to_flat_state(state)
                                     if variable.get_metadata().get("linear_map", False))

    def flat(self, model) -> dict:
        return dict(zip(self.names, jax.tree.leaves(nnx.state(model, nnx.Param))))

    def model(self, flat: dict):
        return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, [flat[n] for n in self.names]))


def flat_params(model) -> dict:
    """{"blocks/0/time_mix/key/kernel": array, ...} for every nnx.Param."""
    return ParamCodec(model).flat(model)


def materialise_params(config: ModelConfig, params: dict, param_dtype: str = "float32", where: str = "checkpoint",
                       codec: Optional[ParamCodec] = None, shardings: Optional[dict] = None) -> dict:
    """The flat parameters of a model of `config` as `param_dtype` arrays on the default device.

    `params` maps each name to an array or to a function of no arguments that reads one (a
    converted checkpoint's `tensor_reader`s). They are taken out of `params` one at a time: read,
    checked (shape, all values finite), cast and put on the device before the next is read, so
    loading a checkpoint holds one copy of its weights in `param_dtype` plus one tensor in flight,
    never the whole file and a converted copy of it. `shardings` ({name: jax.sharding.Sharding}):
    each array goes straight into its shards on the devices (default: the default device).
    Raises ValueError naming the parameter."""
    codec = codec or ParamCodec(abstract_model(config))
    missing, unexpected = sorted(set(codec.names) - set(params)), sorted(set(params) - set(codec.names))
    if missing or unexpected:
        raise ValueError(f"{where}: parameters do not fit the model: missing {missing}, unexpected {unexpected}")
    out = {}
    for name in codec.names:
        value = params.pop(name)
        value = np.asarray(value() if callable(value) else value)
        if value.shape != codec.shapes[name]:
            raise ValueError(f"{where}: parameter {name}: shape {value.shape}, expected {codec.shapes[name]}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{where}: parameter {name} holds non-finite values")
        if shardings is None:
            out[name] = jnp.asarray(value, param_dtype)
        else:
            out[name] = jax.device_put(np.asarray(value, param_dtype), shardings[name])
        del value
    return out


def model_from_flat_params(config: ModelConfig, flat: dict, param_dtype: str = "float32"):
    """Build a model of `config` whose parameters are `flat` (arrays or readers, see
    `materialise_params`; names and shapes must match exactly). Takes the entries out of `flat`."""
    codec = ParamCodec(abstract_model(config))
    return codec.model(materialise_params(config, flat, param_dtype, codec=codec))


# --- Model directories -----------------------------------------------------------------------------

def check_replaceable(out_dir, force: bool, keep=()) -> None:
    """Refuse, before any work, to write a model directory over anything but a model directory this
    project wrote (and only with `force`), or over a directory holding one of the paths in `keep`."""
    out_dir = pathlib.Path(out_dir).absolute()
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not force:
        raise FileExistsError(f"{out_dir} exists (use --force to replace it)")
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is not a directory; --force replaces only a model directory")
    if not (out_dir / MARKER_FILE).is_file():
        raise FileExistsError(f"{out_dir} is not a model directory written by this project (no {MARKER_FILE}); "
                              "--force replaces only those")
    for path in keep:
        if pathlib.Path(path).resolve().is_relative_to(out_dir.resolve()):
            raise FileExistsError(f"{out_dir} holds {path}; refusing to replace it")


def save_model_dir(out_dir, model, meta: dict, force: bool = False, extra: dict | None = None) -> pathlib.Path:
    """Write `model`'s parameters and `meta` (must include "model": config dict) to `out_dir`;
    `extra` maps further item names to flat {name: array} dicts saved beside the parameters.
    With `force`, replaces an existing model directory (see `check_replaceable`)."""
    out_dir = pathlib.Path(out_dir).absolute()
    check_replaceable(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    checkpointer = ocp.StandardCheckpointer()
    try:
        items = {PARAMS_DIR: {k: np.asarray(v) for k, v in flat_params(model).items()}, **(extra or {})}
        for item, arrays in items.items():
            checkpointer.save(tmp / item, arrays)
            checkpointer.wait_until_finished()
        meta = {**meta, "checksums": {item: tree_checksums(arrays) for item, arrays in items.items()}}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        (tmp / MARKER_FILE).write_text("a microrwkv_jax model directory: --force may replace it\n")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    finally:
        checkpointer.close()          # joins orbax's background writers before any clean-up
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def is_model_dir(path) -> bool:
    path = pathlib.Path(path)
    return (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def read_model_dir_meta(path) -> dict:
    """The metadata (config.json) of a model directory."""
    return json.loads((pathlib.Path(path) / CONFIG_FILE).read_text())


def stored_array_metadata(item_dir) -> dict:
    """{name: metadata with .shape and .dtype} of the arrays of an orbax checkpoint item (a
    `params/` directory), read from its metadata alone: no array is read."""
    item_dir = user_path(item_dir)      # (given a relative path, orbax returns no metadata and no error)
    with quiet_orbax():                 # (orbax warns that a run's item has no step metadata)
        metadata = ocp.StandardCheckpointer().metadata(item_dir)
    metadata = getattr(metadata, "item_metadata", metadata)
    if metadata is None:
        raise CorruptCheckpointError(f"{shown_path(item_dir)}: unreadable checkpoint (orbax finds no array metadata)")
    return dict(metadata)


def host_restore_target(item_dir) -> dict:
    """The arrays of an orbax checkpoint item as abstract arrays in this process's host memory:
    what to restore a checkpoint onto whatever mesh or device count saved it (without a target,
    orbax insists on the saving topology)."""
    device = host_device() or jax.devices()[0]
    return {name: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=jax.sharding.SingleDeviceSharding(device))
            for name, m in stored_array_metadata(item_dir).items()}


def restore_model_dir_params(path):
    """Returns (flat params, config, meta) from a directory written by `save_model_dir`, its
    parameters checked against their checksums (directories written before checksums: unchecked)."""
    path = pathlib.Path(path).absolute()
    try:
        meta = read_model_dir_meta(path)
    except (OSError, ValueError) as err:
        raise CorruptCheckpointError(f"{path / CONFIG_FILE}: unreadable ({first_line(err)})") from None
    config = config_from_dict(meta["model"])
    try:
        target = host_restore_target(path / PARAMS_DIR)
        with ocp.StandardCheckpointer() as checkpointer:
            flat = checkpointer.restore(path / PARAMS_DIR, target)
    except Exception as err:     # orbax and tensorstore raise many types for missing or truncated files
        raise unreadable(path / PARAMS_DIR, err) from None
    if "checksums" in meta:
        verify_checksums(flat, meta["checksums"][PARAMS_DIR], str(path / PARAMS_DIR))
    return flat, config, meta


def restore_model_dir(path):
    """Returns (model, config, meta) from a directory written by `save_model_dir`."""
    flat, config, meta = restore_model_dir_params(path)
    return model_from_flat_params(config, flat), config, meta


# --- Training runs' checkpoints ----------------------------------------------------------------------

def run_checkpoint_manager(run_dir, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    """A run's checkpoints: keeps the last `keep` steps and the best by validation loss; saves
    asynchronously (unless read-only)."""
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(keep),
        checkpoint_managers.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    with quiet_orbax() if read_only else contextlib.nullcontext():
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=not read_only,
                                               create=not read_only, read_only=read_only)
        return ocp.CheckpointManager(user_path(run_dir) / "checkpoints", options=options, item_names=RUN_ITEMS)


def latest_run_checkpoint(run_dir) -> Optional[int]:
    """The step of a run's newest complete checkpoint, or None."""
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        return None
    return run_checkpoint_manager(run_dir, read_only=True).latest_step()


def _restore_run_items(run_dir, step: Optional[int], **items):
    """Restore the named items of a run's checkpoint (the latest complete one by default)."""
    manager = run_checkpoint_manager(run_dir, read_only=True)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint in {pathlib.Path(run_dir) / 'checkpoints'}")
    return manager.restore(step, args=ocp.args.Composite(**items))


def restore_run_params(run_dir, step: Optional[int] = None):
    """(flat params in host memory, meta) of a training run's checkpoint (the latest by default),
    whatever mesh saved it, checked against the checksums stored with it."""
    step = latest_run_checkpoint(run_dir) if step is None else step
    if step is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint in {pathlib.Path(run_dir) / 'checkpoints'}")
    where = pathlib.Path(run_dir) / "checkpoints" / str(step)
    try:
        target = host_restore_target(where / "params")
        restored = _restore_run_items(run_dir, step, params=ocp.args.StandardRestore(target),
                                      meta=ocp.args.JsonRestore())
    except FileNotFoundError:
        raise
    except Exception as err:     # orbax and tensorstore raise many types for missing or truncated files
        raise unreadable(where, err) from None
    params = dict(restored.params)
    if "checksums" in restored.meta:
        verify_checksums(params, restored.meta["checksums"]["params"], str(where / "params"))
    return params, restored.meta
