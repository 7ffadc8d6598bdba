"""The trainer behind train.py: one jit-compiled step over a device Mesh, orbax checkpoints
with exact resume, periodic validation against the corpus's entropy floor, multi-host input.

Data parallelism: parameters and optimizer state are replicated, the global batch is sharded
along the mesh axis "data", and XLA inserts the gradient all-reduce (jit + sharding, JAX's
replacement for pmap). With several processes (`jax.distributed`), each process builds only
its own rows of every global batch.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from microrwkv_jax import flops
from microrwkv_jax.checkpoints import ParamCodec, build_model, is_model_dir, restore_model_dir
from microrwkv_jax.config import FAMILIES, ModelConfig
from microrwkv_jax.data import pipeline
from microrwkv_jax.data.tokenizers import get_tokenizer
from microrwkv_jax.layers.output_head import tied_cross_entropy

REQUIRED_KEYS = ("num_train_steps", "batch_size", "seed", "out_dir", "init_from", "eval_only", "eval_every",
                 "tokenizer", "dataset", "model")
NO_DECAY_SUFFIXES = ("bias", "scale", "weight", "embedding")    # norms, biases, embeddings; time_* below


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message is one line."""


# --- Configuration -----------------------------------------------------------------------------

def model_config_from(cfg, vocab_size: int, backend: Optional[str] = None) -> ModelConfig:
    """The ModelConfig of `cfg.model` (family preset, dtype "auto", vocabulary from the tokenizer)."""
    m = dict(cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else cfg.model)
    family = m.pop("family", "hybrid")
    if family not in FAMILIES and family != "published":
        raise ValueError(f"model.family={family!r}: expected one of {sorted(FAMILIES) + ['published']}")
    if family == "published":
        m["arch"] = "published"
    elif m.get("layers") is None:
        m["layers"] = FAMILIES[family]
    if m.get("layers") is None:
        m.pop("layers", None)
    if m.get("dtype", "auto") == "auto":
        m["dtype"] = "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"
    if m.get("vocab_size") is None:
        m["vocab_size"] = vocab_size
    elif m["vocab_size"] < vocab_size:
        raise ValueError(f"model.vocab_size={m['vocab_size']}: smaller than the tokenizer's vocabulary ({vocab_size})")
    try:
        return ModelConfig.from_dict(m)
    except ValueError as err:
        raise ValueError(f"model.{err}") from None


def validate_config(cfg) -> None:
    """Fail before any work on a missing key or an impossible value, naming the key."""
    for key in REQUIRED_KEYS:
        if key not in cfg:
            raise ValueError(f"config: missing key {key!r}")
    positive = ("num_train_steps", "batch_size", "eval_every", "grad_accum_steps", "log_every",
                "checkpoint_every", "keep_checkpoints", "eval_batches", "loss_chunk_elements")
    for key in positive:
        if key in cfg and cfg[key] is not None and (not isinstance(cfg[key], int) or cfg[key] < 1):
            raise ValueError(f"{key}={cfg[key]!r}: must be a positive integer")
    if cfg.batch_size % cfg.grad_accum_steps:
        raise ValueError(f"batch_size={cfg.batch_size}: must be divisible by grad_accum_steps={cfg.grad_accum_steps}")
    for key in ("learning_rate", "min_learning_rate", "weight_decay", "grad_clip"):
        if cfg[key] < 0 or not math.isfinite(cfg[key]):
            raise ValueError(f"{key}={cfg[key]!r}: must be a finite number >= 0")
    if cfg.warmup_steps < 0:
        raise ValueError(f"warmup_steps={cfg.warmup_steps!r}: must be >= 0")
    if not isinstance(cfg.init_from, str) or not cfg.init_from:
        raise ValueError(f"init_from={cfg.init_from!r}: 'scratch' or a checkpoint path")
    if cfg.init_from != "scratch" and not os.path.exists(cfg.init_from):
        raise ValueError(f"init_from={cfg.init_from!r}: no such checkpoint")
    if cfg.tokenizer not in ("byte", "gpt2"):
        raise ValueError(f"tokenizer={cfg.tokenizer!r}: unknown tokenizer; expected 'byte' or 'gpt2'")
    vocab = {"byte": 257, "gpt2": 50257}[cfg.tokenizer]
    model_config_from(cfg, vocab, backend="cpu")     # model sub-config errors surface now, before JAX starts


# --- Optimisation ------------------------------------------------------------------------------

def decays(name: str) -> bool:
    """AdamW weight decay only on weight matrices: not on norms, biases, embeddings, time_* params."""
    leaf = name.rsplit("/", 1)[-1]
    return not leaf.startswith("time_") and not leaf.endswith(NO_DECAY_SUFFIXES)


def make_optimizer(cfg) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.num_train_steps, cfg.warmup_steps + 1), end_value=cfg.min_learning_rate)
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
        optax.adamw(schedule, b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay,
                    mask=lambda params: {k: decays(k) for k in params}),
    )


def loss_chunk_len(local_rows: int, seq_len: int, vocab_size: int, budget: Optional[int] = None) -> int:
    """Positions per chunk of the fused head loss: about `budget` logits alive at a time (default
    2^23, 32 MB of float32, on CPU where staying near the caches pays; 2^28 on GPUs), with the
    sequence cut into equal chunks so that padding the last one wastes less than one position
    per chunk (1024 positions in chunks of at most 333 -> 4 chunks of 256, not 4 of 333)."""
    if budget is None:
        budget = 2 ** 23 if jax.default_backend() == "cpu" else 2 ** 28
    longest = max(1, budget // (local_rows * vocab_size))
    num_chunks = -(-seq_len // longest)
    return -(-seq_len // num_chunks)


def make_loss_fn(codec: ParamCodec, aux_weight: float, data_shards: int = 1,
                 loss_chunk_elements: Optional[int] = None):
    """(params, batch [B, T+1]) -> (cross-entropy + aux_weight * MoE aux loss, (cross-entropy, aux loss)).

    The head's cross-entropy is the fused, chunked `tied_cross_entropy`. `data_shards` is the size
    of the mesh's data axis: the loss keeps one embedding-gradient accumulator per shard, so that
    XLA sums them across devices once, after its chunk loop, instead of once per chunk."""
    def loss_fn(params, batch):
        model = codec.model(params)
        x, _, aux = model.features(batch[:, :-1])
        rows, t = batch.shape[0] // data_shards, batch.shape[1] - 1
        chunk = loss_chunk_len(rows, t, model.config.vocab_size, loss_chunk_elements)
        ce = tied_cross_entropy(x, model.wte.embedding[...], batch[:, 1:], model.config.vocab_size, chunk, data_shards)
        return ce + aux_weight * aux["moe_aux_loss"], (ce, aux["moe_aux_loss"])
    return loss_fn


def make_train_step(codec: ParamCodec, optimizer, grad_accum_steps: int, aux_weight: float,
                    data_shards: int = 1, loss_chunk_elements: Optional[int] = None):
    """(params, opt_state, batch [B, T+1]) -> (params, opt_state, metrics); jit it with shardings.
    The loss is `make_loss_fn`'s; gradients are averaged over `grad_accum_steps` micro-batches."""
    loss_fn = make_loss_fn(codec, aux_weight, data_shards, loss_chunk_elements)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(params, opt_state, batch):
        micro = batch.reshape(grad_accum_steps, -1, batch.shape[-1])

        def accumulate(acc, mb):
            (loss, (ce, aux)), grads = grad_fn(params, mb)
            return jax.tree.map(jnp.add, acc, (grads, loss, ce, aux)), None

        zeros = (jax.tree.map(jnp.zeros_like, params), 0.0, 0.0, 0.0)
        (grads, loss, ce, aux), _ = jax.lax.scan(accumulate, zeros, micro)
        grads, loss, ce, aux = jax.tree.map(lambda g: g / grad_accum_steps, (grads, loss, ce, aux))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "ce": ce, "moe_aux": aux, "grad_norm": optax.global_norm(grads)}

    return step


def make_eval_step(codec: ParamCodec):
    def eval_step(params, inputs, targets):
        """Sum of token losses and number of scored tokens (padding targets are -1)."""
        logits, _, _ = codec.model(params).forward(inputs)
        mask = targets >= 0
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(mask, targets, 0))
        return jnp.sum(losses * mask), jnp.sum(mask)
    return eval_step


# --- Checkpoints -------------------------------------------------------------------------------

def checkpoint_manager(out_dir, cfg, read_only: bool = False) -> ocp.CheckpointManager:
    """Keeps the last `keep_checkpoints` steps and the best by validation loss; saves asynchronously."""
    from orbax.checkpoint import checkpoint_managers as cm
    keep = cfg.get("keep_checkpoints", 3) if cfg is not None else 3
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(keep),
        cm.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=not read_only,
                                           create=not read_only, read_only=read_only)
    return ocp.CheckpointManager(pathlib.Path(out_dir).absolute() / "checkpoints", options=options,
                                 item_names=("params", "opt_state", "meta"))


def latest_run_checkpoint(run_dir) -> Optional[int]:
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        return None
    return checkpoint_manager(run_dir, None, read_only=True).latest_step()


def _restore_items(run_dir, step: Optional[int], **items):
    """Restore the named items of a run's checkpoint (the latest complete one by default)."""
    manager = checkpoint_manager(run_dir, None, read_only=True)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint in {pathlib.Path(run_dir) / 'checkpoints'}")
    return manager.restore(step, args=ocp.args.Composite(**items))


def restore_run_params(run_dir, step: Optional[int] = None):
    """(flat params as numpy, meta) of a training run's checkpoint (the latest by default)."""
    restored = _restore_items(run_dir, step, params=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
    return dict(restored.params), restored.meta


def read_run_meta(run_dir, step: Optional[int] = None) -> dict:
    """The metadata (model config, tokenizer, step) of a run's checkpoint, without its arrays."""
    return _restore_items(run_dir, step, meta=ocp.args.JsonRestore()).meta


def load_init_params(path):
    """Flat params, ModelConfig and tokenizer of `init_from` (model dir, run dir or .pth)."""
    from microrwkv_jax.checkpoints import flat_params, load_model
    path = pathlib.Path(path)
    if path.is_dir() and not is_model_dir(path):
        flat, meta = restore_run_params(path)
        return flat, ModelConfig.from_dict(meta["model"]), meta.get("tokenizer", "gpt2")
    if is_model_dir(path):
        model, config, meta = restore_model_dir(path)
        return flat_params(model), config, meta.get("tokenizer", "gpt2")
    model, config = load_model(path)
    return flat_params(model), config, "gpt2"


# --- The run -----------------------------------------------------------------------------------

def initialize_distributed(cfg) -> None:
    """jax.distributed from config keys or the environment (coordinator, process count and id)."""
    d = cfg.get("distributed") or {}
    address = d.get("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not address:
        return
    num = d.get("num_processes") or int(os.environ["JAX_NUM_PROCESSES"])
    pid = d.get("process_id")
    pid = int(os.environ["JAX_PROCESS_ID"]) if pid is None else pid
    jax.config.update("jax_cpu_collectives_implementation", "gloo")   # CPU processes talk over gloo
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)


def process_rows(global_batch: int) -> slice:
    """This process's rows of a global batch (processes own equal, consecutive blocks of rows)."""
    per_process = global_batch // jax.process_count()
    return slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)


class Run:
    """Everything a training or evaluation run needs, built from a validated config."""

    def __init__(self, cfg, progress: bool = True):
        self.cfg, self.progress = cfg, progress and jax.process_index() == 0
        self.out_dir = pathlib.Path(cfg.out_dir)
        self.tokenizer = get_tokenizer(cfg.tokenizer)
        init_params = None
        if cfg.init_from != "scratch":
            init_params, init_config, init_tokenizer = load_init_params(cfg.init_from)
            if init_tokenizer != cfg.tokenizer:
                raise TrainingError(f"init_from={cfg.init_from!r} was trained with tokenizer {init_tokenizer!r}, "
                                    f"not {cfg.tokenizer!r}")
            self.model_config = init_config.replace(
                dtype=model_config_from(cfg, self.tokenizer.vocab_size).dtype)
        else:
            self.model_config = model_config_from(cfg, self.tokenizer.vocab_size)
        if self.model_config.vocab_size < self.tokenizer.vocab_size:
            raise TrainingError(f"model vocab_size={self.model_config.vocab_size} does not fit the "
                                f"{cfg.tokenizer!r} tokenizer's {self.tokenizer.vocab_size} tokens")
        self.data = pipeline.prepare_data(cfg.dataset, cfg.data, self.tokenizer, progress=self.progress)
        block = self.model_config.block_size
        if self.data.train.size < block + 2:
            raise TrainingError(f"dataset {cfg.dataset!r}: {self.data.train.size} training tokens, fewer than "
                                f"block_size + 2 = {block + 2}")
        self.val_inputs, self.val_targets, used, window_of_doc = pipeline.val_windows(
            self.data, block, self.tokenizer.eot_id)
        if cfg.eval_batches:     # score a fixed prefix of the held-out windows
            keep = cfg.eval_batches * cfg.batch_size
            self.val_inputs, self.val_targets = self.val_inputs[:keep], self.val_targets[:keep]
            used = used[window_of_doc < keep]
        scored = int(np.sum(self.val_targets >= 0))
        self.floor = pipeline.floor_for_documents(self.data.info, used, scored)

        # Model, parameters, optimizer; everything replicated over a 1-D data-parallel mesh.
        model = build_model(self.model_config, seed=cfg.seed)
        self.codec = ParamCodec(model)
        if init_params is not None:
            self.codec.check(init_params)
            model = self.codec.model({k: jnp.asarray(v, jnp.float32) for k, v in init_params.items()})
        self.mesh = Mesh(np.asarray(jax.devices()), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        if cfg.batch_size % jax.device_count():
            raise TrainingError(f"batch_size={cfg.batch_size} is not divisible by the {jax.device_count()} devices")
        if (cfg.batch_size // cfg.grad_accum_steps) % jax.device_count():
            raise TrainingError(f"batch_size / grad_accum_steps = {cfg.batch_size // cfg.grad_accum_steps} is not "
                                f"divisible by the {jax.device_count()} devices")
        self.params = jax.device_put(self.codec.flat(model), self.replicated)
        self.optimizer = make_optimizer(cfg)
        self.opt_state = jax.jit(self.optimizer.init, out_shardings=self.replicated)(self.params)
        step = make_train_step(self.codec, self.optimizer, cfg.grad_accum_steps, cfg.moe_aux_weight,
                               data_shards=jax.device_count(), loss_chunk_elements=cfg.get("loss_chunk_elements"))
        self.train_step = jax.jit(step, in_shardings=(self.replicated, self.replicated, self.batch_sharding),
                                  out_shardings=(self.replicated, self.replicated, self.replicated),
                                  donate_argnums=(0, 1))
        self.eval_step = jax.jit(make_eval_step(self.codec),
                                 in_shardings=(self.replicated, self.batch_sharding, self.batch_sharding))
        self.step = 0
        self.flops_per_token = flops.train_flops_per_token(self.model_config, block)
        self.peak = cfg.get("peak_flops") or flops.device_peak_flops()

    # -- batches --------------------------------------------------------------------------------
    def global_batch(self, step: int):
        """The global batch of `step` as a sharded array; each process supplies only its rows."""
        cfg = self.cfg
        local = pipeline.train_batch(self.data.train, cfg.seed, step, cfg.batch_size, self.model_config.block_size,
                                     process_rows(cfg.batch_size))
        return jax.make_array_from_process_local_data(self.batch_sharding, local,
                                                      (cfg.batch_size, self.model_config.block_size + 1))

    def evaluate(self) -> float:
        total, count = 0.0, 0
        b = self.cfg.batch_size
        n = self.val_inputs.shape[0]
        for i in range(0, n, b):
            x, y = self.val_inputs[i:i + b], self.val_targets[i:i + b]
            if x.shape[0] < b:   # pad to the static batch with unscored rows
                x = np.concatenate([x, np.full((b - x.shape[0], x.shape[1]), self.tokenizer.eot_id, np.int32)])
                y = np.concatenate([y, np.full((b - y.shape[0], y.shape[1]), -1, np.int32)])
            mine = process_rows(b)
            xs = jax.make_array_from_process_local_data(self.batch_sharding, x[mine], x.shape)
            ys = jax.make_array_from_process_local_data(self.batch_sharding, y[mine], y.shape)
            loss_sum, n_tok = self.eval_step(self.params, xs, ys)
            total += float(loss_sum)
            count += int(n_tok)
        return total / max(count, 1)

    # -- checkpoints ----------------------------------------------------------------------------
    def meta(self) -> dict:
        return {"model": self.model_config.to_dict(), "tokenizer": self.cfg.tokenizer, "step": self.step,
                "data_position": {"seed": self.cfg.seed, "next_step": self.step}, "seed": self.cfg.seed,
                "config": json.loads(self.cfg.to_json_best_effort()) if hasattr(self.cfg, "to_json_best_effort") else {}}

    def save(self, manager, metrics: Optional[dict] = None) -> None:
        manager.save(self.step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(self.params), opt_state=ocp.args.StandardSave(self.opt_state),
            meta=ocp.args.JsonSave(self.meta())), metrics=metrics)

    def restore(self, manager, step: int) -> None:
        abstract = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated), tree)
        restored = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract(self.params)),
            opt_state=ocp.args.StandardRestore(abstract(self.opt_state)),
            meta=ocp.args.JsonRestore()))
        if restored.meta["model"] != self.model_config.to_dict():
            raise TrainingError(f"{self.out_dir}: its checkpoint is of another model config; "
                                "use another out_dir or the same config")
        self.params, self.opt_state = restored.params, restored.opt_state
        self.step = int(restored.meta["step"])


def check_writable(out: pathlib.Path) -> None:
    """Fail unless out_dir exists as a writable directory or can be created."""
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TrainingError(f"out_dir={str(out)!r} is not writable ({existing} is not a directory)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TrainingError(f"out_dir={str(out)!r} is not writable (permission denied on {existing})")


def log_line(path: pathlib.Path, record: dict) -> None:
    if jax.process_index() == 0:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def train(cfg) -> dict:
    """Train (or with eval_only, evaluate) as `cfg` says. Returns the last metrics."""
    from tqdm import tqdm

    out = pathlib.Path(cfg.out_dir)
    check_writable(out)
    run = Run(cfg)          # data and model first: bad input fails before out_dir is created
    out.mkdir(parents=True, exist_ok=True)
    manager = checkpoint_manager(out, cfg)
    latest = manager.latest_step()
    if latest is not None:
        run.restore(manager, latest)
    metrics_path = out / "metrics.jsonl"
    info = run.data.info
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if jax.process_index() == 0 else (lambda *a: None)
    n_params = sum(int(np.prod(s)) for s in run.codec.shapes.values())
    say(f"model: {run.model_config.arch} {list(run.model_config.layers) if run.model_config.arch == 'causal' else ''} "
        f"{n_params:,} parameters, dtype {run.model_config.dtype}; {jax.device_count()} device(s) "
        f"({jax.devices()[0].platform}), {jax.process_count()} process(es)")
    say(f"data: {info['dataset']} / {info['tokenizer']}: {info['train_tokens']:,} train tokens, "
        f"{int(np.sum(run.val_targets >= 0)):,} scored val tokens in {run.val_inputs.shape[0]} windows")
    if run.floor is not None:
        ef = info["entropy_floor"]
        say(f"entropy floor of the held-out stories: {run.floor:.4f} nats/token "
            f"({ef['nats_per_byte']:.4f} nats/byte, {ef['nats_per_story']:.2f} nats/story)")
    if latest is not None:
        say(f"resumed from {out / 'checkpoints' / str(latest)} at step {latest}")

    if cfg.eval_only:
        if latest is None and cfg.init_from == "scratch":
            manager.close()
            raise TrainingError(f"eval_only: no checkpoint in {out / 'checkpoints'} and init_from='scratch'; "
                                "nothing to evaluate")
        val = run.evaluate()
        record = {"step": run.step, "val_loss": val, "entropy_floor": run.floor}
        baselines = pipeline.ngram_baselines(run.data.train, run.val_inputs, run.val_targets, run.tokenizer.vocab_size)
        record.update({f"{k}_loss": v for k, v in baselines.items()})
        say(f"eval: val_loss {val:.4f}" + (f"  floor {run.floor:.4f}" if run.floor is not None else "")
            + f"  (unigram {baselines['unigram']:.4f}, bigram {baselines['bigram']:.4f})")
        log_line(metrics_path, {"event": "eval_only", **record})
        manager.close()
        return record

    tokens_per_step = cfg.batch_size * run.model_config.block_size
    bar = tqdm(total=cfg.num_train_steps, initial=run.step, disable=not run.progress, unit="step", dynamic_ncols=True)
    last, t_last, steps_since = {}, time.perf_counter(), 0
    deadline = time.monotonic() + 60 * cfg.max_train_minutes if cfg.get("max_train_minutes") else None
    try:
        while run.step < cfg.num_train_steps:
            batch = run.global_batch(run.step)
            new_params, new_opt, metrics = run.train_step(run.params, run.opt_state, batch)
            loss = float(metrics["loss"])     # one host sync per step: a NaN must stop before it is saved
            if not math.isfinite(loss):
                manager.wait_until_finished()
                kept = manager.latest_step()
                raise TrainingError(f"loss is {loss} at step {run.step}; stopped without saving "
                                    f"(last good checkpoint: {'step ' + str(kept) if kept is not None else 'none'})")
            run.params, run.opt_state = new_params, new_opt
            run.step += 1
            steps_since += 1
            now = time.perf_counter()
            if run.step % cfg.log_every == 0 or run.step == cfg.num_train_steps:
                dt = (now - t_last) / steps_since
                tok_s = tokens_per_step / dt
                mfu = run.flops_per_token * tok_s / run.peak if run.peak else None
                last = {"step": run.step, "loss": loss, "ce": float(metrics["ce"]), "moe_aux": float(metrics["moe_aux"]),
                        "grad_norm": float(metrics["grad_norm"]), "tokens_per_s": tok_s, "mfu": mfu,
                        "time": time.time()}
                log_line(metrics_path, last)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}", mfu="n/a" if mfu is None else f"{mfu:.1%}")
                t_last, steps_since = time.perf_counter(), 0
            bar.update(1)
            out_of_time = deadline is not None and time.monotonic() > deadline
            is_last = run.step == cfg.num_train_steps or out_of_time
            eval_now = run.step % cfg.eval_every == 0 or is_last
            save_now = run.step % cfg.checkpoint_every == 0 or eval_now
            if eval_now:
                val = run.evaluate()
                record = {"step": run.step, "val_loss": val, "entropy_floor": run.floor}
                log_line(metrics_path, record)
                last.update(record)
                if run.progress:
                    bar.write(f"step {run.step}: val_loss {val:.4f}"
                              + (f"  entropy floor {run.floor:.4f}" if run.floor else ""), file=sys.stderr)
            if save_now:
                run.save(manager, {"val_loss": last["val_loss"]} if eval_now else None)
                t_last = time.perf_counter()
            if out_of_time:
                say(f"stopping at step {run.step}: max_train_minutes={cfg.max_train_minutes} reached")
                break
    finally:
        bar.close()
        manager.wait_until_finished()
        manager.close()
    return last
