"""Convert a published MicroRWKV PyTorch checkpoint into this project's model.

The table `published_parameter_map` is the one place that knows the published state-dict
names: it gives each name's shape (for validation) and where its values go in
`PublishedModel` (PyTorch Linear weights [out, in] become Flax kernels [in, out]).
"""

from __future__ import annotations

import numpy as np

from microrwkv_jax.config import ModelConfig
from microrwkv_jax.torch_checkpoint import CheckpointFormatError, load_torch_checkpoint

MODEL_ARGS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "num_experts",
              "num_active_experts", "expert_dim", "dim", "bias")
PREFIXES = ("_orig_mod.", "module.")


class ConversionError(ValueError):
    """The checkpoint is readable but is not a published MicroRWKV model."""


def config_from_model_args(model_args: dict) -> ModelConfig:
    """The `arch="published"` ModelConfig of a checkpoint's `model_args`."""
    if not isinstance(model_args, dict):
        raise ConversionError("checkpoint has no 'model_args' dict")
    missing = [k for k in MODEL_ARGS if k not in model_args]
    if missing:
        raise ConversionError(f"model_args lacks {missing}")
    if model_args["dim"] != model_args["n_embd"]:
        raise ConversionError(f"model_args: dim={model_args['dim']} differs from n_embd={model_args['n_embd']}; "
                              "the published model needs them equal")
    try:
        return ModelConfig(arch="published", **{k: model_args[k] for k in MODEL_ARGS if k != "dim"})
    except (ValueError, TypeError) as err:
        raise ConversionError(f"model_args cannot build a model: {err}") from None


def _linear(torch_prefix, our_prefix, d_in, d_out, bias):
    entries = [(f"{torch_prefix}.weight", (d_out, d_in), f"{our_prefix}/kernel", np.transpose)]
    if bias:
        entries.append((f"{torch_prefix}.bias", (d_out,), f"{our_prefix}/bias", None))
    return entries


def published_parameter_map(config: ModelConfig):
    """[(torch name, torch shape, our flat name, transform or None)], in state-dict order.
    Expert weights map to ("moe/experts_kernel", j): row j of a stacked parameter."""
    c, h, b = config.n_embd, config.n_head, config.bias
    x = int(config.expert_dim * 1.2)
    vec = lambda a: a.reshape(-1)
    entries = [("transformer.wte.weight", (config.vocab_size, c), "wte/embedding", None),
               ("transformer.wpe.weight", (config.block_size, c), "wpe/embedding", None)]
    for i in range(config.n_layer):
        t, o = f"transformer.h.{i}.", f"blocks/{i}/"
        for name in ("time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g"):
            entries.append((f"{t}tmix.{name}", (1, 1, c), f"{o}tmix/{name}", vec))
        entries += [(f"{t}tmix.time_decay", (h, 1), f"{o}tmix/time_decay", vec),
                    (f"{t}tmix.time_faaaa", (h, 1), f"{o}tmix/time_faaaa", vec)]
        for name in ("receptance", "key", "value", "gate", "output"):
            entries += _linear(f"{t}tmix.{name}", f"{o}tmix/{name}", c, c, b)
        entries += [(f"{t}tmix.ln_x.weight", (c,), f"{o}tmix/ln_x/weight", None),
                    (f"{t}tmix.ln_x.bias", (c,), f"{o}tmix/ln_x/bias", None)]
        for name in ("time_maa_k", "time_maa_r"):
            entries.append((f"{t}cmix.{name}", (1, 1, c), f"{o}cmix/{name}", vec))
        entries += _linear(f"{t}cmix.key", f"{o}cmix/key", c, 3 * c, b)
        entries += _linear(f"{t}cmix.value", f"{o}cmix/value", 3 * c, c, b)
        entries += _linear(f"{t}cmix.receptance", f"{o}cmix/receptance", c, c, b)
        entries += _linear(f"{t}sliding_attn.qkv", f"{o}sliding_attn/qkv", c, 3 * c, False)
        entries += _linear(f"{t}sliding_attn.proj", f"{o}sliding_attn/proj", c, c, False)
        entries += _linear(f"{t}grouped_attn.qkvw", f"{o}grouped_attn/qkvw", c, 4 * c, False)
        entries += _linear(f"{t}grouped_attn.out", f"{o}grouped_attn/out", c, c, False)
        entries += _linear(f"{t}moe.gate", f"{o}moe/gate", c, config.num_experts, True)
        for j in range(config.num_active_experts):
            entries += [(f"{t}moe.experts.{j}.weight", (x, c), (f"{o}moe/experts_kernel", j), np.transpose),
                        (f"{t}moe.experts.{j}.bias", (x,), (f"{o}moe/experts_bias", j), None)]
        entries += _linear(f"{t}moe.fc", f"{o}moe/fc", x, c, True)
    entries.append(("transformer.ln_f.weight", (c,), "ln_f/scale", None))
    if b:
        entries.append(("transformer.ln_f.bias", (c,), "ln_f/bias", None))
    entries.append(("lm_head.weight", (config.vocab_size, c), None, None))   # tied to wte
    return entries


def strip_prefixes(state_dict: dict) -> dict:
    out = {}
    for name, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix):], True
        out[name] = value
    return out


def params_from_state_dict(state_dict: dict, config: ModelConfig) -> dict:
    """Check every name and shape, then return our flat float32 parameter dict."""
    state_dict = strip_prefixes(state_dict)
    table = published_parameter_map(config)
    expected = {name: shape for name, shape, _, _ in table}
    missing = [n for n in expected if n not in state_dict]
    unexpected = sorted(n for n in state_dict if n not in expected)
    misshaped = [f"{n} {tuple(np.shape(state_dict[n]))} (expected {expected[n]})"
                 for n in expected if n in state_dict and tuple(np.shape(state_dict[n])) != expected[n]]
    if missing or unexpected or misshaped:
        parts = [f"{label}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''} ({len(items)})"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                 if items]
        raise ConversionError("state dict does not match the published MicroRWKV model: " + "; ".join(parts))
    flat, stacked = {}, {}
    for name, _, target, transform in table:
        if target is None:
            continue
        value = np.asarray(state_dict[name]).astype(np.float32)
        if transform is not None:
            value = transform(value)
        if isinstance(target, tuple):
            stacked.setdefault(target[0], {})[target[1]] = value
        else:
            flat[target] = np.ascontiguousarray(value)
    for target, rows in stacked.items():
        flat[target] = np.stack([rows[j] for j in sorted(rows)])
    return flat


def read_published_checkpoint(path):
    """(checkpoint dict, state dict, ModelConfig) of a `.pth` file, validated."""
    ckpt = load_torch_checkpoint(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ConversionError("checkpoint has no 'model' state dict")
    return ckpt, ckpt["model"], config_from_model_args(ckpt.get("model_args"))


def state_dict_dtype(state_dict: dict) -> str:
    dtypes = sorted({str(np.asarray(v).dtype) for v in state_dict.values()})
    return "/".join(dtypes)


def convert_torch_file(path):
    """Returns (PublishedModel, ModelConfig, checkpoint dict) from a published `.pth` file."""
    from microrwkv_jax.checkpoints import model_from_flat_params
    ckpt, state_dict, config = read_published_checkpoint(path)
    model = model_from_flat_params(config, params_from_state_dict(state_dict, config))
    return model, config, ckpt


__all__ = ["CheckpointFormatError", "ConversionError", "config_from_model_args", "convert_torch_file",
           "params_from_state_dict", "published_parameter_map", "read_published_checkpoint"]


def _scalar(value):
    return value.item() if isinstance(value, np.ndarray) and value.size == 1 else value


def _flatten_optimizer(optimizer: dict) -> dict:
    """The torch optimizer's per-parameter tensors as {"state/<param>/<name>": array}."""
    flat = {}
    for param_id, slots in (optimizer.get("state") or {}).items():
        for name, value in slots.items():
            flat[f"state/{param_id}/{name}"] = np.asarray(value)
    return flat


def convert(path, out=None, force: bool = False, keep_optimizer: bool = False, tokenizer: str = "gpt2"):
    """Convert `path` (.pth) into a model directory; returns (output path, summary lines)."""
    import pathlib

    from microrwkv_jax.checkpoints import save_model_dir

    path = pathlib.Path(path)
    out = pathlib.Path(out) if out is not None else path.with_suffix("")
    if out.resolve() == path.resolve():
        raise ConversionError(f"--out {out} is the input file itself")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists (use --force to replace it)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    model, config, ckpt = convert_torch_file(path)
    optimizer = ckpt.get("optimizer") if keep_optimizer else None
    if keep_optimizer and not isinstance(optimizer, dict):
        raise ConversionError("--keep_optimizer: the checkpoint holds no optimizer state")
    meta = {"model": config.to_dict(), "tokenizer": tokenizer, "source": str(path.resolve()),
            "iter_num": _scalar(ckpt.get("iter_num")),
            "best_val_loss": float(_scalar(ckpt["best_val_loss"])) if "best_val_loss" in ckpt else None,
            "train_config": {k: v for k, v in (ckpt.get("config") or {}).items()
                             if isinstance(v, (int, float, str, bool, type(None)))}}
    extra = {}
    if optimizer is not None:
        extra["torch_optimizer"] = _flatten_optimizer(optimizer)
        if not extra["torch_optimizer"]:
            raise ConversionError("--keep_optimizer: the checkpoint's optimizer state is empty")
        meta["torch_optimizer_param_groups"] = [
            {k: v for k, v in g.items() if isinstance(v, (int, float, str, bool, list, tuple, type(None)))}
            for g in optimizer.get("param_groups", [])]
    written = save_model_dir(out, model, meta, force=force, extra=extra)
    n_params = sum(int(np.prod(shape)) for name, shape, target, _ in published_parameter_map(config) if target)
    c = config
    summary = [
        f"converted {path} -> {written}",
        f"  model: published MicroRWKV (not causal): n_layer={c.n_layer} n_embd={c.n_embd} n_head={c.n_head} "
        f"block_size={c.block_size} vocab_size={c.vocab_size}",
        f"         num_experts={c.num_experts} num_active_experts={c.num_active_experts} "
        f"expert_dim={c.expert_dim} bias={c.bias}",
        f"  parameters: {n_params:,} (tied lm_head counted once)",
        f"  dtype: {state_dict_dtype(ckpt['model'])} in the checkpoint -> float32 parameters",
        f"  iter_num: {meta['iter_num']}  best_val_loss: {meta['best_val_loss']}",
        f"  optimizer state: {'kept (torch_optimizer/)' if optimizer is not None else 'dropped (--keep_optimizer keeps it)'}",
    ]
    return written, summary


def main(argv=None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="convert_torch_ckpt.py",
                                     description="Convert a published MicroRWKV PyTorch checkpoint (.pth) "
                                                 "into an orbax model directory, without importing torch.")
    parser.add_argument("checkpoint", help="the .pth file, e.g. out/ckpt-500.pth")
    parser.add_argument("--out", help="output directory (default: the .pth path without its extension)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.add_argument("--keep_optimizer", action="store_true", help="also keep the torch optimizer state")
    parser.add_argument("--tokenizer", default="gpt2", help="tokenizer recorded for sampling (default gpt2)")
    args = parser.parse_args(argv)
    try:
        _, summary = convert(args.checkpoint, args.out, args.force, args.keep_optimizer, args.tokenizer)
    except (OSError, ValueError) as err:       # CheckpointFormatError and ConversionError are ValueErrors
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, FileNotFoundError) and err.filename:
            message = f"{err.filename}: no such file"
        print(f"convert_torch_ckpt.py: error: {message}", file=sys.stderr)
        return 1
    print("\n".join(summary))
    return 0
