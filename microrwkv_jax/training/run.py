"""A training run: its data, model, sharded steps and optimizer state, evaluation against the
corpus's entropy floor, and its checkpoints (save, exact resume, metadata)."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import time
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from microrwkv_jax import sharding
from microrwkv_jax.checkpoints import (CorruptCheckpointError, ParamCodec, materialise_params, run_checkpoint_manager,
                                      stored_array_metadata, tree_checksums, unreadable, verify_checksums)
from microrwkv_jax.config import resolve_dtype
from microrwkv_jax.data import pipeline
from microrwkv_jax.data.tokenizers import TOKENIZERS, get_tokenizer
from microrwkv_jax.families import abstract_model, build_model, get_family, model_config_from, train_flops_per_token
from microrwkv_jax.flops import device_peak_flops
from microrwkv_jax.loading import read_params
from microrwkv_jax.paths import shown_path, user_pattern
from microrwkv_jax.training.distributed import process_rows
from microrwkv_jax.training import lora
from microrwkv_jax.training import scoring
from microrwkv_jax.training.steps import ShardedSteps
from microrwkv_jax.training.story_samples import NUM_SAMPLES, valid_story_rate


SCORE_PIECE = 1024      # tokens per call when a score carries the model's state through a text


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message is one line."""


# The settings that make a run's checkpoints what they are: resuming with any of them changed is
# refused (`Run.check_same_run`). Everything else (num_train_steps, evaluation and logging, the
# learning-rate schedule, the mesh, the cache directories) may change between resumes.
RUN_KEYS = ("dataset", "tokenizer", "data", "model", "batch_size", "seed", "init_from")
RUN_KEYS_EXEMPT = ("data.cache_dir",)
PATH_KEYS = ("dataset", "tokenizer", "init_from", "data.tfds_data_dir", "data.val_dataset")


def flat_config(tree: dict, prefix: str = "") -> dict:
    """{"data.val_fraction": 0.02, ...} of a nested config dict."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_key_differences(saved: dict, now: dict) -> list:
    """[(key, saved value, current value)] for the RUN_KEYS where two configs (JSON dicts) differ;
    paths compare as absolute paths (older checkpoints recorded them as given). A data setting an
    older checkpoint did not record (`data.txt_split`, `data.val_dataset`) is compared only for a
    dataset of local files, the only data it changes."""
    saved, now = flat_config(saved), flat_config(now)
    local_files = now.get("dataset") != "stories" and not str(now.get("dataset", "")).startswith("tfds:")

    def normal(key, value):
        if key in PATH_KEYS and isinstance(value, str) and value not in ("scratch", "stories", *TOKENIZERS) \
                and not value.startswith("tfds:"):
            return user_pattern(value)
        return value

    keys = sorted(k for k in set(saved) | set(now)
                  if k.split(".")[0] in RUN_KEYS and k not in RUN_KEYS_EXEMPT
                  and (k in saved or local_files or not k.startswith("data.")))
    return [(k, saved.get(k), now.get(k)) for k in keys if normal(k, saved.get(k)) != normal(k, now.get(k))]


class Run:
    """Everything a training or evaluation run needs, built from a validated config."""

    def __init__(self, cfg, progress: bool = True):
        self.cfg, self.progress = cfg, progress and jax.process_index() == 0
        self.out_dir = pathlib.Path(cfg.out_dir)
        self.mesh = sharding.make_mesh(cfg.get("mesh"))      # (a mesh the devices cannot form fails first)
        shards = sharding.batch_shards(self.mesh)
        if cfg.batch_size % shards:
            raise TrainingError(f"batch_size={cfg.batch_size} is not divisible by the {shards} batch shards "
                                f"(mesh data x fsdp)")
        if (cfg.batch_size // cfg.grad_accum_steps) % shards:
            raise TrainingError(f"batch_size / grad_accum_steps = {cfg.batch_size // cfg.grad_accum_steps} is not "
                                f"divisible by the {shards} batch shards (mesh data x fsdp)")
        self.tokenizer = get_tokenizer(cfg.tokenizer)
        init_params = None
        if cfg.init_from != "scratch":       # the checkpoint says what the model is; the config only its dtype and remat
            init_params, init_config, init_tokenizer = read_params(cfg.init_from)
            if init_tokenizer is not None and init_tokenizer != cfg.tokenizer:
                raise TrainingError(f"init_from={cfg.init_from!r} was trained with tokenizer {init_tokenizer!r}, "
                                    f"not {cfg.tokenizer!r}")
            self.model_config = init_config.replace(
                dtype=resolve_dtype(cfg.model.get("dtype") or "auto", jax.default_backend()),
                remat=bool(cfg.model.get("remat") or False))
        else:
            self.model_config = model_config_from(cfg.model, self.tokenizer.vocab_size, jax.default_backend())
        if (cfg.get("tune") or "all") == "state":
            if self.model_config.arch not in ("rwkv5", "rwkv6", "rwkv7"):
                raise TrainingError(f"tune='state': state tuning is for RWKV-5/6/7; this model is {self.model_config.arch!r}")
            self.model_config = self.model_config.replace(time_state=True)
        if self.model_config.vocab_size < self.tokenizer.vocab_size:
            raise TrainingError(f"model vocab_size={self.model_config.vocab_size} does not fit the "
                                f"{cfg.tokenizer!r} tokenizer's {self.tokenizer.vocab_size} tokens")
        self.data = pipeline.prepare_data(cfg.dataset, cfg.data, self.tokenizer, progress=self.progress)
        block = self.model_config.block_size
        if self.data.train.size < block + 2:
            raise TrainingError(f"dataset {shown_path(cfg.dataset)!r}: {self.data.train.size:,} training tokens "
                                f"({self.data.info['val_tokens']:,} held out), fewer than block_size + 2 = {block + 2}: "
                                f"lower model.block_size or use more text")
        is_stream = self.data.info.get("text_stream", False)      # a text read as written: no documents
        self.window_starts = (pipeline.DocumentWindowStarts(self.data.train_doc_starts, self.data.train.size, block)
                              if cfg.data.get("document_windows") and not is_stream and not cfg.eval_only else None)
        self.stories = cfg.dataset == "stories"
        if self.stories:
            self._story_windows(cfg, block)
        else:       # any other text: every held-out token scored (`scoring`), the eval set a prefix of windows
            self.held_out = scoring.held_out_stream(self.data.val, self.tokenizer.eot_id)
            self.windows = scoring.Windows(self.held_out, block, block)
            self.eval_windows = min(len(self.windows), cfg.eval_batches * cfg.batch_size) if cfg.eval_batches \
                else len(self.windows)
            self.floor = self.held_out_floor = None

        # Model, parameters, optimizer, placed on the mesh as the family's sharding says. From a
        # checkpoint the model is never initialised: its parameters are the checkpoint's, read one
        # at a time and put straight into their shards, so no device ever holds all of them.
        base_codec = ParamCodec(abstract_model(self.model_config))
        self.codec = base_codec
        if (cfg.get("tune") or "all") == "lora":      # adapters beside the frozen base (training.lora)
            try:
                self.codec = lora.LoraCodec(base_codec, cfg.get("lora_targets") or ("blocks/*",), cfg.get("lora_rank") or 8)
            except ValueError as err:
                raise TrainingError(str(err)) from None
        if init_params is not None:     # state tuning a model that has no time_state yet: its untuned start, zeros
            init_params = {**{name: np.zeros(shape, np.float32) for name, shape in self.codec.shapes.items()
                              if name.endswith("/att/time_state")}, **init_params}
        self.steps = ShardedSteps(self.codec, cfg, get_family(self.model_config.arch).param_axes, self.mesh)
        if init_params is None:
            # (initialised in host memory where JAX has its CPU backend: a model too large for one
            # accelerator still starts; then each array goes to its shards)
            with jax.default_device(sharding.host_device()):
                init_params = base_codec.flat(build_model(self.model_config, seed=cfg.seed))
        if self.codec is not base_codec:
            init_params = {**init_params, **lora.init_adapters(self.codec.adapter_shapes, cfg.seed)}
        if not all(isinstance(v, jax.Array) for v in init_params.values()):   # a checkpoint's readers, or adapters
            init_params = materialise_params(self.model_config, init_params, cfg.get("param_dtype") or "float32",
                                             where=cfg.init_from, codec=self.codec,
                                             shardings=self.steps.param_shardings)
        # An evaluation has no optimizer state (for a 7B model it would be twice the weights again).
        self.params, self.opt_state = self.steps.init(init_params, with_optimizer=not cfg.eval_only)
        del init_params
        # Compiled now, ahead of the first step, so that a step too large for the device is refused
        # in one line instead of failing in the middle of an allocation (an evaluation needs none).
        self.train_step = None
        if not cfg.eval_only:
            self.train_step = self.steps.compile(self.params, self.opt_state, (cfg.batch_size, block + 1))
            check_fits(self.train_step, cfg)
        self.step = 0
        self.train_seconds = 0.0      # training time before this process (a resumed run's)
        self.flops_per_token = train_flops_per_token(self.model_config, block)
        self.peak = cfg.get("peak_flops") or device_peak_flops()

    def _story_windows(self, cfg, block: int) -> None:
        """The built-in corpus's validation: whole held-out stories packed into windows, scored
        against the entropy floor of exactly those stories."""
        self.val_inputs, self.val_targets, used, window_of_doc = pipeline.val_windows(
            self.data, block, self.tokenizer.eot_id)
        # Every held-out document that fits a window, for the evaluation at the end of training.
        self.held_out_inputs, self.held_out_targets, self.held_out_docs = self.val_inputs, self.val_targets, len(used)
        self.held_out_floor = pipeline.floor_for_documents(self.data.info, used, int(np.sum(self.val_targets >= 0)))
        if cfg.eval_batches:     # periodic evaluations score a fixed prefix of the held-out windows
            keep = cfg.eval_batches * cfg.batch_size
            self.val_inputs, self.val_targets = self.val_inputs[:keep], self.val_targets[:keep]
            used = used[window_of_doc < keep]
        self.floor = pipeline.floor_for_documents(self.data.info, used, int(np.sum(self.val_targets >= 0)))
        self.eval_docs = len(used)       # the eval set: the held-out documents periodic evaluations score

    def describe_eval_set(self) -> str:
        if self.stories:
            return (f"{int(np.sum(self.val_targets >= 0)):,} scored val tokens in {self.val_inputs.shape[0]} windows")
        info = self.data.info
        return (f"{info['val_tokens']:,} held-out tokens ({info['val_bytes']:,} bytes); eval set: the first "
                f"{self.eval_windows} of its {len(self.windows)} windows of {self.model_config.block_size} tokens")

    # -- batches --------------------------------------------------------------------------------
    def global_batch(self, step: int):
        """The global batch of `step` as a sharded array; each process supplies only its rows."""
        cfg = self.cfg
        local = pipeline.train_batch(self.data.train, cfg.seed, step, cfg.batch_size, self.model_config.block_size,
                                     process_rows(cfg.batch_size), self.window_starts)
        return jax.make_array_from_process_local_data(self.steps.batch_sharding, local,
                                                      (cfg.batch_size, self.model_config.block_size + 1))

    def evaluate(self, inputs=None, targets=None) -> float:
        """Mean loss (nats/token) over held-out windows: the eval set's by default."""
        if inputs is None and not self.stories:
            nats, count = self.score_batches(self.windows.batches(self.cfg.batch_size, self.eval_windows))
            return nats / max(count, 1)
        inputs = self.val_inputs if inputs is None else inputs
        targets = self.val_targets if targets is None else targets
        b = self.cfg.batch_size
        pad = lambda a, fill: np.concatenate([a, np.full((b - a.shape[0], a.shape[1]), fill, np.int32)])
        batches = ((pad(inputs[i:i + b], self.tokenizer.eot_id), pad(targets[i:i + b], -1))
                   for i in range(0, inputs.shape[0], b))      # padded to the static batch with unscored rows
        total, count = self.score_batches(batches)
        return total / max(count, 1)

    def score_batches(self, batches) -> tuple:
        """(sum of token losses, scored tokens) over (inputs, targets) batches of batch_size rows."""
        total, count = 0.0, 0
        mine = process_rows(self.cfg.batch_size)
        for x, y in batches:
            xs = jax.make_array_from_process_local_data(self.steps.batch_sharding, x[mine], x.shape)
            ys = jax.make_array_from_process_local_data(self.steps.batch_sharding, y[mine], y.shape)
            loss_sum, n_tok = self.steps.eval_step(self.params, xs, ys)
            total += float(loss_sum)
            count += int(n_tok)
        return total, count

    def text_scores(self) -> dict:
        """The held-out text scored whole (`scoring`): the window score (windows of block_size
        tokens, each read from its start, as nanoGPT reports) and the full-context score (the
        state carried through the whole text where the family allows, else windows overlapping
        by half), per token, byte and character, with the time they took."""
        info, block = self.data.info, self.model_config.block_size
        record, started = {}, time.perf_counter()
        nats, count = self.score_batches(self.windows.batches(self.cfg.batch_size))
        record.update(scoring.score_record("window", nats, count, info["val_bytes"], info["val_chars"]))
        stateful = get_family(self.model_config.arch).stateful_score(self.model_config) and jax.process_count() == 1
        if stateful:
            piece = SCORE_PIECE
            init = self.codec.model(self.params).init_state(1, piece)
            nats, count = scoring.score_carrying_state(
                lambda state, x, y: self.steps.score_piece(self.params, state, x, y), init, self.held_out, piece)
        else:
            nats, count = self.score_batches(scoring.Windows(self.held_out, block, block // 2 or 1)
                                             .batches(self.cfg.batch_size))
        record.update(scoring.score_record("full", nats, count, info["val_bytes"], info["val_chars"]))
        record.update(full_context="state carried through the text" if stateful else
                      f"windows of {block} tokens, {block // 2 or 1} apart", val_bytes=info["val_bytes"],
                      val_chars=info["val_chars"],
                      score_seconds=time.perf_counter() - started)
        return record

    @property
    def story_samples(self) -> int:
        """Stories sampled per evaluation (config `valid_story_samples`; 0: none)."""
        return self.cfg.get("valid_story_samples", NUM_SAMPLES)

    def valid_story_rate(self) -> Optional[float]:
        """On the built-in story corpus, the fraction of `story_samples` stories sampled at
        temperature 1 that its grammar accepts (`story_samples`); None for other datasets, with
        none to sample, and for a family with no recurrent sampler: the published architecture
        reruns its window for every token and compiles each new window length, minutes per
        evaluation. Sampling runs on the parameters where they are (sharded or not); with several
        processes each samples from its own gathered copy (the story models are small)."""
        if (self.cfg.dataset != "stories" or not self.story_samples
                or not get_family(self.model_config.arch).recurrent):
            return None
        params = self.params
        if jax.process_count() > 1:
            params = {name: multihost_utils.process_allgather(value, tiled=True) for name, value in params.items()}
        rate, _ = valid_story_rate(self.codec.model(params), self.tokenizer, self.story_samples)
        return rate

    # -- checkpoints ----------------------------------------------------------------------------
    def meta(self) -> dict:
        return {"model": self.model_config.to_dict(), "tokenizer": self.cfg.tokenizer, "step": self.step,
                "train_seconds": self.train_seconds,
                "data_position": {"seed": self.cfg.seed, "next_step": self.step},
                "config": json.loads(self.cfg.to_json_best_effort()) if hasattr(self.cfg, "to_json_best_effort") else {}}

    def save(self, manager, metrics: Optional[dict] = None, train_seconds: Optional[float] = None) -> None:
        """Save params, optimizer state and metadata (with checksums of every array), asynchronously;
        `train_seconds`: the training time so far (a time-budgeted schedule resumes from it)."""
        if train_seconds is not None:
            self.train_seconds = train_seconds
        meta = {**self.meta(), "checksums": {"params": tree_checksums(self.params),
                                             "opt_state": tree_checksums(self.opt_state)}}
        manager.save(self.step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(self.params), opt_state=ocp.args.StandardSave(self.opt_state),
            meta=ocp.args.JsonSave(meta)), metrics=metrics)

    def restore(self, manager, step: int) -> None:
        """Restore the checkpoint of `step`; CorruptCheckpointError if it is unreadable or fails its
        checksums; TrainingError if it belongs to a run of other settings (`check_same_run`)."""
        where = self.out_dir / "checkpoints" / str(step)
        try:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as err:     # orbax raises many types for missing or truncated files
            raise unreadable(where, err) from None
        if not self.cfg.eval_only:      # (an evaluation may score a checkpoint on other data)
            check_same_run(self.cfg, meta, step)
        if meta["model"] != self.model_config.to_dict():
            raise TrainingError(f"{shown_path(self.out_dir)}: its checkpoint is of another model config; "
                                "use another out_dir or the same config")
        self.check_param_shapes(where / "params")
        # Restored onto this run's shardings, whatever mesh saved it: orbax reads each device's shards.
        abstract = lambda tree: jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)
        items = {"params": ocp.args.StandardRestore(abstract(self.params))}
        if self.opt_state is not None:       # an evaluation restores the parameters only
            items["opt_state"] = ocp.args.StandardRestore(abstract(self.opt_state))
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:     # orbax and tensorstore raise many types for missing or truncated files
            raise unreadable(where, err) from None
        if "checksums" in meta:
            verify_checksums(restored.params, meta["checksums"]["params"], str(where / "params"))
            if self.opt_state is not None:
                verify_checksums(restored.opt_state, meta["checksums"]["opt_state"], str(where / "opt_state"))
        self.params = restored.params
        if self.opt_state is not None:
            self.opt_state = restored.opt_state
        self.step = int(meta["step"])
        self.train_seconds = float(meta.get("train_seconds", 0.0))

    def check_param_shapes(self, params_dir) -> None:
        """Raise TrainingError if a checkpoint's parameters (its metadata says their shapes; no
        array is read) do not have this model's shapes: another model, or a layout an older
        version wrote. Such a checkpoint is not corrupt and must not be moved aside. Returns when
        they match or the metadata cannot be read (the restore then says what is wrong)."""
        try:
            shapes = {name: tuple(value.shape) for name, value in stored_array_metadata(params_dir).items()}
        except Exception:     # unreadable: the restore reports it as corrupt
            return
        where = pathlib.Path(params_dir).parent
        for name, value in self.params.items():
            if shapes.get(name, tuple(value.shape)) != tuple(value.shape):
                raise TrainingError(f"{where}: parameter {name} has shape {shapes[name]}, this model's is "
                                    f"{tuple(value.shape)} (a checkpoint of another model or of an older "
                                    "microrwkv_jax layout); use another out_dir")
        missing = sorted(set(self.params) - set(shapes))
        if missing:
            raise TrainingError(f"{where}: parameters {missing[:3]} are missing (a checkpoint of another model or "
                                "version); use another out_dir")

    def resume(self, manager, say) -> Optional[int]:
        """Restore the newest intact checkpoint. A corrupt newer one is moved aside (renamed
        STEP.corrupt-N, never deleted) with a one-line warning. Returns the step, or None."""
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                self.restore(manager, step)
                return step
            except CorruptCheckpointError as err:
                corrupt = self.out_dir / "checkpoints" / str(step)
                aside = corrupt.with_name(f"{step}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
                if jax.process_index() == 0:
                    corrupt.rename(aside)
                multihost_utils.sync_global_devices(f"moved aside checkpoint {step}")
                manager.reload()
                say(f"warning: {err}; moved it to {aside.name} and trying the previous checkpoint")
        return None


def check_same_run(cfg, meta: dict, step: int) -> None:
    """Refuse to resume a checkpoint trained with another dataset, tokenizer, data settings,
    model, batch, seed or starting point (RUN_KEYS): continuing its optimizer state on other
    data or another model would silently be another run. One line naming the keys and what to
    do instead. Checkpoints that recorded no config are compared by their model alone."""
    saved = meta.get("config")
    if not saved:
        return
    differing = run_key_differences(saved, json.loads(cfg.to_json_best_effort()))
    if not differing:
        return
    out = shown_path(cfg.out_dir)
    listed = ", ".join(f"{key} {a!r} -> {b!r}" for key, a, b in differing[:4])
    more = f" and {len(differing) - 4} more" if len(differing) > 4 else ""
    raise TrainingError(f"{out}: its checkpoint at step {step} was trained with other settings ({listed}{more}); "
                        f"to train afresh use a new --config.out_dir, to fine-tune from it add "
                        f"--config.init_from={out} with a new --config.out_dir")


def check_resumable(cfg) -> None:
    """Before any data or model work: refuse a training run whose out_dir's newest checkpoint was
    trained with other settings (`check_same_run`). An unreadable newest checkpoint is left to
    the resume, which moves it aside."""
    out = pathlib.Path(cfg.out_dir)
    if cfg.eval_only or not (out / "checkpoints").is_dir():
        return
    manager = run_checkpoint_manager(out, read_only=True)
    step = manager.latest_step()
    if step is None:
        return
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception:      # unreadable: the resume reports it and moves it aside
        return
    finally:
        manager.close()
    check_same_run(cfg, meta, step)


def device_memory_bytes() -> Optional[int]:
    """Memory one device of this process can use: its allocator's limit on accelerators; on CPU
    the host's physical memory, shared by this process's CPU devices."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // jax.local_device_count()
    return None


def check_fits(compiled, cfg) -> None:
    """Refuse a train step whose compiled memory (arguments, outputs, temporaries) exceeds the device's."""
    limit, memory = device_memory_bytes(), compiled.memory_analysis()
    if limit is None or memory is None:
        return
    need = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes)
    if need > limit:
        raise TrainingError(f"the train step needs {need / 2**30:.1f} GiB per device, more than the "
                            f"{limit / 2**30:.1f} GiB there is: lower batch_size (or raise grad_accum_steps), "
                            f"block_size={cfg.model.block_size} or the model's size")


LOCK_FILE = "train.lock"


def lock_out_dir(out: pathlib.Path):
    """An exclusive lock on `out` for the life of the run: the open lock file, to keep (and close at
    the end). flock is released by the OS when the process dies, so a killed run never blocks the
    next. A second trainer is refused, naming the holder's PID. Only process 0 locks."""
    if jax.process_index() != 0:
        return None
    lock = open(out / LOCK_FILE, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise TrainingError(f"out_dir={shown_path(out)!r} is in use by another train.py (PID {holder}); wait for it "
                            "to finish or use another out_dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def check_writable(out: pathlib.Path) -> None:
    """Fail unless out_dir exists as a writable directory or can be created."""
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TrainingError(f"out_dir={shown_path(out)!r} is not writable ({existing} is not a directory)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TrainingError(f"out_dir={shown_path(out)!r} is not writable (permission denied on {existing})")


def log_line(path: pathlib.Path, record: dict) -> None:
    if jax.process_index() == 0:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
