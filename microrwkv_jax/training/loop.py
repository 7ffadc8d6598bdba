"""The training loop behind train.py: steps, logging, periodic validation and checkpoints,
a NaN guard, a time limit; `eval_only` scores a checkpoint instead."""

from __future__ import annotations

import math
import pathlib
import sys
import time

import jax
import numpy as np

from microrwkv_jax.checkpoints import run_checkpoint_manager
from microrwkv_jax.data import pipeline
from microrwkv_jax.families import get_family
from microrwkv_jax.training.run import Run, TrainingError, check_writable, lock_out_dir, log_line


def non_finite(loss: float, grad_norm: float, params_finite: bool) -> str:
    """What is wrong with a step's result, or "" if its loss, gradients and new parameters are finite."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if not math.isfinite(grad_norm):
        return f"gradient norm is {grad_norm}"
    return "" if params_finite else "parameters are not finite after the update"


def train(cfg) -> dict:
    """Train (or with eval_only, evaluate) as `cfg` says, holding out_dir's lock. Returns the last metrics."""
    out = pathlib.Path(cfg.out_dir)
    check_writable(out)
    run = Run(cfg)          # data and model first: bad input fails before out_dir is created
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_out_dir(out)
    try:
        return _train_holding_lock(cfg, run, out)
    finally:
        if lock is not None:
            lock.close()


def _train_holding_lock(cfg, run: Run, out: pathlib.Path) -> dict:
    from tqdm import tqdm

    manager = run_checkpoint_manager(out, keep=cfg.get("keep_checkpoints", 3))
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if jax.process_index() == 0 else (lambda *a: None)
    latest = run.resume(manager, say)
    metrics_path = out / "metrics.jsonl"
    info = run.data.info
    n_params = sum(int(np.prod(s)) for s in run.codec.shapes.values())
    say(f"model: {get_family(run.model_config.arch).describe(run.model_config)} {n_params:,} parameters, "
        f"dtype {run.model_config.dtype}; {jax.device_count()} device(s) ({jax.devices()[0].platform}), "
        f"{jax.process_count()} process(es)")
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
        started = time.perf_counter()
        val = run.evaluate()
        seconds, scored = time.perf_counter() - started, int(np.sum(run.val_targets >= 0))
        record = {"step": run.step, "val_loss": val, "entropy_floor": run.floor, "val_tokens": scored,
                  "seconds": seconds}
        baselines = pipeline.ngram_baselines(run.data.train, run.val_inputs, run.val_targets, run.tokenizer.vocab_size)
        record.update({f"{k}_loss": v for k, v in baselines.items()})
        say(f"eval: val_loss {val:.4f} nats/token over {scored:,} tokens in {seconds:.1f} s"
            + (f"  floor {run.floor:.4f}" if run.floor is not None else "")
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
            problem = non_finite(loss, float(metrics["grad_norm"]), bool(metrics["params_finite"]))
            if problem:
                manager.wait_until_finished()
                kept = manager.latest_step()     # only finite states are ever saved
                raise TrainingError(f"{problem} at step {run.step}; stopped without saving "
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
                # A checkpoint competes for "best" only with a finite validation loss.
                finite_val = eval_now and math.isfinite(last["val_loss"])
                run.save(manager, {"val_loss": last["val_loss"]} if finite_val else None)
                t_last = time.perf_counter()
            if out_of_time:
                say(f"stopping at step {run.step}: max_train_minutes={cfg.max_train_minutes} reached")
                break
    finally:
        bar.close()
        manager.wait_until_finished()
        manager.close()
    return last
