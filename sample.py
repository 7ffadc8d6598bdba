#!/usr/bin/env python
"""Generate text from a MicroRWKV checkpoint, streaming it as it is generated.

    python sample.py --prompt "One day"                   # newest checkpoint of ./out
    python sample.py --ckpt out/ckpt-500 --prompt "Once"  # a converted checkpoint (or a .pth, or a run dir)
    python sample.py --model_name ckpt-500 --max_num_tokens 200   # the published generate.py's flags
    python sample.py --ckpt RWKV-4-Pile-169M.pth --tokenizer 20B_tokenizer.json --prompt "One day"
    python sample.py --ckpt RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth --prompt "One day"   # World tokenizer
    python sample.py --ckpt big-model --fsdp 8            # parameters split over 8 devices

Causal models decode recurrently (constant time and memory per token); the published
architecture is not causal and reruns its whole window for every token, as the original does.
"""

import argparse
import math
import pathlib
import sys
import time


def parse_args(argv):
    p = argparse.ArgumentParser(prog="sample.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt", default="", help="text to continue (empty: start from end-of-text)")
    p.add_argument("--ckpt", help="a run directory, a converted model directory or a published .pth file")
    p.add_argument("--model_name", help="the checkpoint out/NAME (a directory, or out/NAME.pth / out/NAME.pt)")
    p.add_argument("--out_dir", default="out", help="run directory searched by default (default: out)")
    p.add_argument("--max_new_tokens", "--max_num_tokens", dest="max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_samples", type=int, default=1, help="samples decoded together as one batch")
    p.add_argument("--no_stop", action="store_true", help="do not stop at end-of-text")
    p.add_argument("--dtype", default=None, help="compute dtype override (float32, bfloat16)")
    p.add_argument("--param_dtype", default="float32",
                   help="the parameters' dtype (bfloat16: half the memory of float32; lossless for a bf16 checkpoint)")
    p.add_argument("--tokenizer", default=None,
                   help="byte, gpt2, world, a tokenizer.json or a World vocabulary .txt path (default: the one "
                        "the checkpoint records; world for RWKV-5/6/7 .pth files)")
    p.add_argument("--no_compilation_cache", action="store_true",
                   help="compile everything afresh instead of using JAX's persistent compilation cache "
                        "(microrwkv_jax/compilation_cache.py says where it is)")
    p.add_argument("--fsdp", type=int, default=1,
                   help="split every parameter over this many devices (for a model larger than one device)")
    p.add_argument("--tensor", type=int, default=1, help="split heads and hidden units over this many devices")
    p.add_argument("--max_prompt_tokens", type=int, default=16384,
                   help="refuse longer prompts (a recurrent prefill takes time in proportion to them)")
    return p.parse_args(argv)


def resolve_checkpoint(args) -> pathlib.Path:
    if args.ckpt:
        return pathlib.Path(args.ckpt)
    if args.model_name:
        base = pathlib.Path(args.out_dir) / args.model_name
        for candidate in (base, base.with_name(base.name + ".pth"), base.with_name(base.name + ".pt")):
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"--model_name {args.model_name}: none of {base}, {base}.pth, {base}.pt exists")
    return pathlib.Path(args.out_dir)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError, KeyError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"sample.py: error: {message}", file=sys.stderr)
        return 1
    except RuntimeError as err:      # jax's XlaRuntimeError: out of device memory, above all
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        print("sample.py: error: out of device memory; lower --num_samples or --max_new_tokens, or use "
              "--dtype bfloat16", file=sys.stderr)
        return 1


def run(args) -> int:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens={args.max_new_tokens}: must be >= 1")
    if args.num_samples < 1:
        raise ValueError(f"--num_samples={args.num_samples}: must be >= 1")
    if args.max_prompt_tokens < 1:
        raise ValueError(f"--max_prompt_tokens={args.max_prompt_tokens}: must be >= 1")
    for flag in ("temperature", "top_p"):
        value = getattr(args, flag)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"--{flag}={value}: must be a finite number")
    if args.temperature < 0:
        raise ValueError(f"--temperature={args.temperature}: must be >= 0")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top_k={args.top_k}: must be >= 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top_p={args.top_p}: must be in (0, 1]")
    for flag in ("fsdp", "tensor"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag}={getattr(args, flag)}: must be >= 1")
    if args.param_dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--param_dtype={args.param_dtype}: expected float32, bfloat16 or float16")
    path = resolve_checkpoint(args)
    if not path.exists():
        hint = "" if args.ckpt or args.model_name else " (train one with train.py, or pass --ckpt)"
        raise FileNotFoundError(f"{path}: no such checkpoint{hint}")

    import numpy as np
    from absl import logging
    logging.set_verbosity(logging.ERROR)     # orbax warns about read-only directories
    from microrwkv_jax.families import get_family
    from microrwkv_jax.loading import load_model_and_tokenizer, use_lean_cpu_scheduler
    if args.param_dtype != "float32":
        use_lean_cpu_scheduler()         # before JAX starts: convert each weight only when used
    from microrwkv_jax.sampling import generate
    if not args.no_compilation_cache:
        from microrwkv_jax.compilation_cache import enable_compilation_cache
        enable_compilation_cache()

    mesh = None
    if args.fsdp > 1 or args.tensor > 1:     # parameters read straight into their shards, as training places them
        from microrwkv_jax.sharding import make_mesh
        mesh = make_mesh({"data": -1, "fsdp": args.fsdp, "tensor": args.tensor})
    model, config, tokenizer = load_model_and_tokenizer(path, dtype=args.dtype, tokenizer=args.tokenizer,
                                                        param_dtype=args.param_dtype, mesh=mesh)
    if mesh is not None:
        print(f"sample.py: parameters split over {mesh.devices.size} devices in a mesh of "
              + " x ".join(f"{axis}={size}" for axis, size in mesh.shape.items()), file=sys.stderr)
    try:
        prompt = tokenizer.encode(args.prompt) if args.prompt else [tokenizer.eot_id]
    except UnicodeEncodeError as err:
        raise ValueError(f"--prompt: character {err.object[err.start]!r} at position {err.start} cannot be "
                         f"encoded by the {tokenizer.name} tokenizer") from None
    if len(prompt) > args.max_prompt_tokens:
        raise ValueError(f"--prompt: {len(prompt)} tokens, more than --max_prompt_tokens={args.max_prompt_tokens}; "
                         "raise it to prefill them anyway")
    family = get_family(config.arch)
    if not family.recurrent:
        print(f"sample.py: {family.describe(config)} has no recurrent form; rerunning the whole window for "
              "every token, as its original sampler does", file=sys.stderr)
        if len(prompt) > config.block_size:
            print(f"sample.py: the prompt's {len(prompt)} tokens exceed block_size={config.block_size}; only the "
                  f"last {config.block_size} are seen", file=sys.stderr)
    elif len(prompt) > config.block_size:
        print(f"sample.py: the prompt's {len(prompt)} tokens exceed block_size={config.block_size}; prefilling them "
              f"in {-(-len(prompt) // 64)} pieces before the first new token", file=sys.stderr)
    prompt = np.tile(np.asarray(prompt, np.int32)[None], (args.num_samples, 1))

    streamed, printed, t_first = [], [""], [None]
    stream = args.num_samples == 1

    def on_tokens(tokens):
        if t_first[0] is None:
            t_first[0] = time.perf_counter()
            if stream:       # (the prompt is echoed once generation has begun: an error leaves stdout empty)
                sys.stdout.write(args.prompt)
        if not stream:
            return
        streamed.extend(int(t) for t in tokens[0])
        upto = streamed.index(tokenizer.eot_id) if tokenizer.eot_id in streamed and not args.no_stop else len(streamed)
        text = tokenizer.decode(streamed[:upto]).rstrip("\ufffd")     # hold back a split UTF-8 character
        sys.stdout.write(text[len(printed[0]):])
        sys.stdout.flush()
        printed[0] = text

    t0 = time.perf_counter()
    out = generate(model, prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed, stop_token=None if args.no_stop else tokenizer.eot_id,
                   on_tokens=on_tokens)
    elapsed = time.perf_counter() - t0
    n_generated = 0
    for i, row in enumerate(out):
        row = [int(t) for t in row]
        if not args.no_stop and tokenizer.eot_id in row:
            row = row[: row.index(tokenizer.eot_id) + 1]
        n_generated += len(row)
        body = [t for t in row if t != tokenizer.eot_id] if not args.no_stop else row
        if stream:
            final = tokenizer.decode(body)
            sys.stdout.write(final[len(printed[0]):] + "\n")
        else:
            sys.stdout.write(("" if i == 0 else "\n---------------\n") + args.prompt + tokenizer.decode(body) + "\n")
    sys.stdout.flush()
    ttft = (t_first[0] - t0) if t_first[0] is not None else elapsed
    # The rate of the tokens after the first: the first token's latency (prefill, and compiling
    # where the cache has nothing) is reported on its own.
    after_first = elapsed - ttft
    rate = f"{(n_generated - args.num_samples) / after_first:.1f} tokens/s after it" \
        if n_generated > args.num_samples and after_first > 0 else "no tokens after it"
    print(f"sample.py: {n_generated} tokens generated, time to first token {ttft * 1000:.0f} ms, {rate} "
          f"({elapsed * 1000:.0f} ms in all)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
