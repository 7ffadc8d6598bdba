"""The training loop behind train.py: steps, logging, periodic validation and checkpoints,
a NaN guard, a time limit; `eval_only` scores a checkpoint instead."""

from __future__ import annotations

import math
import pathlib
import shlex
import sys
import time
from typing import Optional

import jax
import numpy as np

from microrwkv_jax.checkpoints import run_checkpoint_manager
from microrwkv_jax.data import pipeline
from microrwkv_jax.families import get_family
from microrwkv_jax.paths import shown_path
from microrwkv_jax.training.optimizer import learning_rate_at
from microrwkv_jax.training.run import Run, TrainingError, check_resumable, check_writable, lock_out_dir, log_line
from microrwkv_jax.training.train_config import with_absolute_paths


def non_finite(loss: float, grad_norm: float, params_finite: bool) -> str:
    """What is wrong with a step's result, or "" if its loss, gradients and new parameters are finite."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if not math.isfinite(grad_norm):
        return f"gradient norm is {grad_norm}"
    return "" if params_finite else "parameters are not finite after the update"


def relative_to_floor(loss: float, floor) -> str:
    """"  entropy floor 0.0783 (+15.2%)" for a loss against the corpus's floor; "" without one."""
    return f"  entropy floor {floor:.4f} ({loss / floor - 1:+.1%})" if floor else ""


def story_rate_text(rate, samples: int) -> str:
    return "" if rate is None else f"  valid stories {round(rate * samples)}/{samples} ({rate:.0%})"


def train(cfg, started: Optional[float] = None, config_file: Optional[str] = None) -> dict:
    """Train (or with eval_only, evaluate) as `cfg` says, holding out_dir's lock. Returns the last
    metrics. `started`: `time.time()` when the command started, for its time to the first step;
    `config_file`: the config's file, named in the run's log and plot."""
    started = time.time() if started is None else started
    cfg = with_absolute_paths(cfg)      # the run records, and orbax sees, absolute paths only
    out = pathlib.Path(cfg.out_dir)
    check_writable(out)
    # An existing out_dir is locked before its checkpoints are read: a trainer running there
    # writes and deletes them, and is named instead.
    existed = out.is_dir()
    lock = lock_out_dir(out) if existed else None
    try:
        check_resumable(cfg)    # a rerun with other settings is refused before any work
        run = Run(cfg)          # data and model first: bad input fails before out_dir is created
        if not existed:
            out.mkdir(parents=True, exist_ok=True)
            lock = lock_out_dir(out)
        return _train_holding_lock(cfg, run, out, started, config_file)
    finally:
        if lock is not None:
            lock.close()


def _train_holding_lock(cfg, run: Run, out: pathlib.Path, started: float, config_file: Optional[str]) -> dict:
    from tqdm import tqdm

    manager = run_checkpoint_manager(out, keep=cfg.get("keep_checkpoints", 3))
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if jax.process_index() == 0 else (lambda *a: None)
    latest = run.resume(manager, say)
    metrics_path = out / "metrics.jsonl"
    info = run.data.info
    n_params = sum(int(np.prod(s)) for s in run.codec.shapes.values())
    say(f"model: {get_family(run.model_config.arch).describe(run.model_config)} {n_params:,} parameters, "
        f"dtype {run.model_config.dtype}; {jax.device_count()} device(s) ({jax.devices()[0].platform}) in a mesh of "
        + " x ".join(f"{axis}={size}" for axis, size in run.steps.mesh.shape.items())
        + f", {jax.process_count()} process(es)")
    say(f"data: {shown_path(info['dataset']) if cfg.dataset != 'stories' else 'stories'} / {info['tokenizer']}: "
        f"{info['train_tokens']:,} train tokens, {run.describe_eval_set()}")
    if run.floor is not None:
        say(f"entropy floor: {run.floor:.4f} nats/token on the eval set ({run.eval_docs} stories, scored every "
            f"{cfg.eval_every} steps), {run.held_out_floor:.4f} on all {run.held_out_docs} held-out stories "
            f"(scored at the end)")
    if latest is not None:
        say(f"resumed from {shown_path(out / 'checkpoints' / str(latest))} at step {latest}")
        budget_spent = bool(cfg.get("max_train_minutes")) and run.train_seconds >= 60 * cfg.max_train_minutes
        if not cfg.eval_only and (run.step >= cfg.num_train_steps or budget_spent):
            manager.close()
            if run.step >= cfg.num_train_steps:
                say(f"{shown_path(out)}: this run is complete (step {run.step} of num_train_steps="
                    f"{cfg.num_train_steps}); raise --config.num_train_steps to train on, or use a new --config.out_dir")
            else:
                say(f"{shown_path(out)}: this run is complete (its max_train_minutes={cfg.max_train_minutes} spent at "
                    f"step {run.step}); raise --config.max_train_minutes to train on, or use a new --config.out_dir")
            final = completed_final_evaluation(run, metrics_path)
            if jax.process_index() == 0:
                summarise(run, out, final, say)
            return final

    if cfg.eval_only:
        if latest is None and cfg.init_from == "scratch":
            manager.close()
            raise TrainingError(f"eval_only: no checkpoint in {shown_path(out / 'checkpoints')} and init_from='scratch'; "
                                "nothing to evaluate")
        eval_started = time.perf_counter()
        if not run.stories:        # a text: all of it, both scores
            record = {"step": run.step, **run.text_scores()}
            record["val_loss"] = record["window_nats_per_token"]
            say(f"eval: {text_score_line(record, run.model_config.block_size)} in {record['score_seconds']:.1f} s")
            log_line(metrics_path, {"event": "eval_only", **record})
            manager.close()
            return record
        val = run.evaluate()
        seconds, scored = time.perf_counter() - eval_started, int(np.sum(run.val_targets >= 0))
        rate = run.valid_story_rate()
        record = {"step": run.step, "val_loss": val, "entropy_floor": run.floor, "valid_story_rate": rate,
                  "val_tokens": scored, "seconds": seconds}
        baselines = pipeline.ngram_baselines(run.data.train, run.val_inputs, run.val_targets, run.tokenizer.vocab_size)
        record.update({f"{k}_loss": v for k, v in baselines.items()})
        say(f"eval: val_loss {val:.4f} nats/token over {scored:,} tokens of the eval set in {seconds:.1f} s"
            + relative_to_floor(val, run.floor) + story_rate_text(rate, run.story_samples)
            + f"  (unigram {baselines['unigram']:.4f}, bigram {baselines['bigram']:.4f})")
        log_line(metrics_path, {"event": "eval_only", **record})
        manager.close()
        return record

    # What the run is, for the log and the plot's title.
    log_line(metrics_path, {"event": "run", "config_file": config_file, "step": run.step,
                            "model": get_family(run.model_config.arch).describe(run.model_config),
                            "n_layer": run.model_config.n_layer, "n_embd": run.model_config.n_embd,
                            "parameters": n_params, "dataset": shown_path(cfg.dataset) if cfg.dataset != "stories"
                            and not cfg.dataset.startswith("tfds:") else cfg.dataset, "tokenizer": info["tokenizer"],
                            "batch_size": cfg.batch_size, "block_size": run.model_config.block_size,
                            "num_train_steps": cfg.num_train_steps})
    tokens_per_step = cfg.batch_size * run.model_config.block_size
    bar = tqdm(total=cfg.num_train_steps, initial=run.step, disable=not run.progress, unit="step", dynamic_ncols=True)
    last, t_last, steps_since = {}, time.perf_counter(), 0
    budget = 60 * cfg.max_train_minutes if cfg.get("max_train_minutes") else None
    first_step, start_step, train_started = True, run.step, time.perf_counter()
    prior_seconds = run.train_seconds       # a resumed run's training time before this process
    elapsed = lambda: prior_seconds + time.perf_counter() - train_started    # training time, resumes included
    try:
        while run.step < cfg.num_train_steps:
            batch = run.global_batch(run.step)
            learning_rate = learning_rate_at(cfg, run.step, elapsed())
            new_params, new_opt, metrics = run.train_step(run.params, run.opt_state, batch, np.float32(learning_rate))
            loss = float(metrics["loss"])     # one host sync per step: a NaN must stop before it is saved
            if first_step:
                first_step, to_first_step = False, time.time() - started
                log_line(metrics_path, {"event": "first_step", "step": run.step + 1,
                                        "seconds_from_start": to_first_step})
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
            out_of_time = budget is not None and elapsed() > budget
            if run.step % cfg.log_every == 0 or run.step == cfg.num_train_steps or out_of_time:
                dt = (now - t_last) / steps_since
                tok_s = tokens_per_step / dt
                mfu = run.flops_per_token * tok_s / run.peak if run.peak else None
                last = {"step": run.step, "loss": loss, "ce": float(metrics["ce"]), "moe_aux": float(metrics["moe_aux"]),
                        "grad_norm": float(metrics["grad_norm"]), "learning_rate": learning_rate,
                        "tokens_per_s": tok_s, "mfu": mfu,
                        "time": time.time()}
                log_line(metrics_path, last)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}", mfu="n/a" if mfu is None else f"{mfu:.1%}")
                t_last, steps_since = time.perf_counter(), 0
            bar.update(1)
            is_last = run.step == cfg.num_train_steps or out_of_time
            # (on a text the final evaluation scores all of it right after: no eval-set score at the end)
            eval_now = run.step % cfg.eval_every == 0 or (is_last and run.stories)
            save_now = run.step % cfg.checkpoint_every == 0 or eval_now or is_last
            if eval_now:
                val = run.evaluate()
                rate = run.valid_story_rate()
                record = {"step": run.step, "val_loss": val, "entropy_floor": run.floor, "valid_story_rate": rate}
                log_line(metrics_path, record)
                last.update(record)
                if run.progress:
                    bar.write(f"step {run.step}: val_loss {val:.4f} (eval set)" + relative_to_floor(val, run.floor)
                              + story_rate_text(rate, run.story_samples), file=sys.stderr)
            if save_now:
                # A checkpoint competes for "best" only with a finite validation loss.
                finite_val = eval_now and math.isfinite(last["val_loss"])
                run.save(manager, {"val_loss": last["val_loss"]} if finite_val else None, train_seconds=elapsed())
                t_last = time.perf_counter()
            if out_of_time:
                say(f"stopping at step {run.step}: max_train_minutes={cfg.max_train_minutes} reached")
                break
    finally:
        bar.close()
        manager.wait_until_finished()
        manager.close()
    if run.step > start_step:
        final = {**final_evaluation(run, last), "steps": run.step - start_step,
                 "train_seconds": time.perf_counter() - train_started, "seconds_to_first_step": to_first_step}
        log_line(metrics_path, final)
        if jax.process_index() == 0:
            summarise(run, out, final, say)
    return last


def text_score_line(record: dict, block: int) -> str:
    """The two scores of a held-out text, per byte (and per token where tokens are not bytes)."""
    def one(name):
        per_token = "" if record[f"{name}_tokens"] == record["val_bytes"] else \
            f", {record[f'{name}_nats_per_token']:.4f} nats/token"
        return (f"{record[f'{name}_nats_per_byte']:.4f} nats/byte ({record[f'{name}_bits_per_byte']:.4f} bits/byte, "
                f"{record[f'{name}_nats_per_char']:.4f} nats/char{per_token})")
    return (f"held-out text of {record['val_bytes']:,} bytes, every byte scored: full context ({record['full_context']}) "
            f"{one('full')}; windows of {block} tokens (nanoGPT's score) {one('window')}")


def final_evaluation(run: Run, last: dict) -> dict:
    """The trained model on every held-out document (periodic evaluations may score a prefix of
    them, `eval_batches`), with the last valid-story rate; on a text, both scores of all of it."""
    if not run.stories:
        record = run.text_scores()
        return {"event": "final_eval", "step": run.step, "val_loss": record["window_nats_per_token"],
                "entropy_floor": None, "valid_story_rate": None, **record}
    if run.held_out_inputs.shape[0] == run.val_inputs.shape[0]:
        val = last["val_loss"]
    else:
        val = run.evaluate(run.held_out_inputs, run.held_out_targets)
    return {"event": "final_eval", "step": run.step, "val_loss": val, "entropy_floor": run.held_out_floor,
            "val_documents": run.held_out_docs, "valid_story_rate": last.get("valid_story_rate")}


def completed_final_evaluation(run: Run, metrics_path: pathlib.Path) -> dict:
    """The final evaluation of a run that is already complete: the one it logged at its last step,
    or (a log without one) the evaluation made now."""
    from microrwkv_jax.plot import read_records

    records = read_records(metrics_path)
    logged = [r for r in records if r.get("event") == "final_eval" and r.get("step") == run.step]
    if logged:
        return logged[-1]
    rates = [r["valid_story_rate"] for r in records if "valid_story_rate" in r and r.get("step") == run.step]
    final = {**final_evaluation(run, {"val_loss": run.evaluate() if run.stories else None,
                                      "valid_story_rate": rates[-1] if rates else None}),
             "evaluated_on_rerun": True}
    log_line(metrics_path, final)
    return final


def summarise(run: Run, out: pathlib.Path, final: dict, say) -> None:
    """The end of a run: where it got to (validation loss against the floor of the same documents,
    valid stories), how long it took, what it wrote (checkpoint, out/loss.png) and what to run next."""
    from microrwkv_jax.plot import plot_runs

    plot = plot_runs([out], out / "loss.png")
    val = final["val_loss"]
    if "train_seconds" in final:
        say(f"\ndone: {final['steps']} steps in {final['train_seconds'] / 60:.1f} min "
            f"({final['seconds_to_first_step']:.0f} s from the command to the first step)")
    else:
        say(f"\ndone: step {final['step']}")
    if "full_nats_per_byte" in final:
        say(f"  {text_score_line(final, run.model_config.block_size)}")
    else:
        say(f"  validation loss {val:.4f} nats/token on all {final['val_documents']} held-out documents"
            + relative_to_floor(val, final["entropy_floor"]).replace("  ", ", ", 1)
            + story_rate_text(final["valid_story_rate"], run.story_samples).replace("  ", ", ", 1))
    say(f"  checkpoint: {shown_path(out / 'checkpoints' / str(final['step']))}")
    say(f"  loss curves: {shown_path(plot)}")
    shown = shown_path(out)
    out_flag = "" if shown == "out" else f" --out_dir {shlex.quote(shown)}"
    say(f"  next: python sample.py{out_flag} --prompt {shell_quote(suggested_prompt(run))}")


def shell_quote(text: str) -> str:
    """`text` as one shell word, in double quotes where the shell leaves them alone (as a user writes it)."""
    return f'"{text}"' if not set(text) & set('"$`\\!') else shlex.quote(text)


def suggested_prompt(run: Run) -> str:
    """A prompt for the `next:` line: "One day" on the built-in stories, else the first words of
    the run's own training text."""
    if run.cfg.dataset == "stories":
        return "One day"
    head = np.asarray(run.data.train[:256]).tolist()
    eot = run.tokenizer.eot_id
    head = head[:head.index(eot)] if eot in head else head
    words = run.tokenizer.decode(head).replace("\ufffd", "").replace("\ufeff", "").split()     # (and a BOM)
    return " ".join(words[:3]) or "The"
