"""PyTorch `.pth` checkpoints and Hugging Face model directories -> this project's models, without torch.

`open_torch_checkpoint` reads the file's structure safely (tensors are read later, one at a
time); the registry finds the family whose layout it has; that family's `torch_checkpoint.read`
maps the state dict to (ModelConfig, parameters as readers).
A Hugging Face directory goes through `read_hf_dir` and the family of its config.json's
`model_type`. `convert_torch_ckpt.py` is the command line over `convert_to_model_dir`.
"""

from __future__ import annotations

import pathlib

import numpy as np

from microrwkv_jax.checkpoints import check_replaceable, flat_params, model_from_flat_params, save_model_dir
from microrwkv_jax.families import FAMILIES, hf_checkpoint_family, torch_checkpoint_family
from microrwkv_jax.hf_checkpoint import is_hf_dir, read_hf_dir
from microrwkv_jax.torch_checkpoint import ConversionError, LazyTensor, open_torch_checkpoint, read_tensors


def read_torch_file(path):
    """Returns (ModelConfig, flat parameters as readers, the checkpoint dict with its tensors unread,
    its Family) of a `.pth` file."""
    ckpt = open_torch_checkpoint(path)
    family = torch_checkpoint_family(ckpt) if isinstance(ckpt, dict) else None
    if family is None:
        known = [arch for arch, f in FAMILIES.items() if f.torch_checkpoint is not None]
        raise ConversionError(f"checkpoint has no 'model' state dict of a known family ({', '.join(known)})")
    config, flat = family.torch_checkpoint.read(ckpt)
    return config, flat, ckpt, family


def read_hf_model_dir(path):
    """Returns (ModelConfig, flat parameters as readers, its Family) of a Hugging Face model directory."""
    hf_config, state_dict = read_hf_dir(path)
    family = hf_checkpoint_family(hf_config.get("model_type"))
    if family is None:
        known = [f.hf_checkpoint.model_type for f in FAMILIES.values() if f.hf_checkpoint is not None]
        raise ConversionError(f"{path}: model_type={hf_config.get('model_type')!r}; expected one of {known}")
    config, flat = family.hf_checkpoint.read(hf_config, state_dict)
    return config, flat, family


def _scalar(value):
    value = value.read() if isinstance(value, LazyTensor) else value
    return value.item() if isinstance(value, np.ndarray) and value.size == 1 else value


def _flatten_optimizer(optimizer: dict) -> dict:
    """The torch optimizer's per-parameter tensors as {"state/<param>/<name>": array}."""
    flat = {}
    for param_id, slots in (optimizer.get("state") or {}).items():
        for name, value in slots.items():
            flat[f"state/{param_id}/{name}"] = np.asarray(read_tensors(value))
    return flat


def _array_dtypes(ckpt: dict) -> str:
    """The dtypes of the checkpoint's weights (its arrays outside the optimizer state)."""
    dtypes, todo = set(), [v for k, v in ckpt.items() if k != "optimizer"]
    while todo:
        value = todo.pop()
        if isinstance(value, (np.ndarray, LazyTensor)):
            dtypes.add(str(value.dtype))
        elif isinstance(value, dict):
            todo.extend(value.values())
    return "/".join(sorted(dtypes))


def convert_to_model_dir(path, out=None, force: bool = False, keep_optimizer: bool = False,
                         tokenizer: str | None = None):
    """Convert `path` (a .pth file or a Hugging Face directory) into a model directory; returns
    (output path, summary lines). `tokenizer` is recorded for sampling (default: a tokenizer.json
    beside a Hugging Face directory, else the family's, e.g. gpt2 for the published model)."""
    path = pathlib.Path(path)
    hf = path.is_dir() and is_hf_dir(path)
    out = pathlib.Path(out) if out is not None else (path.with_name(f"{path.name}-converted") if hf
                                                     else path.with_suffix(""))
    if out.resolve() == path.resolve():
        raise ConversionError(f"--out {out} is the input itself")
    if not path.is_file() and not hf:
        raise FileNotFoundError(f"{path}: no such file")
    check_replaceable(out, force, keep=[path])
    if hf:
        config, flat, family = read_hf_model_dir(path)
        ckpt, source_format = {}, family.hf_checkpoint
        beside = path / "tokenizer.json"
        tokenizer = tokenizer or (str(beside.resolve()) if beside.is_file() else None)
    else:
        config, flat, ckpt, family = read_torch_file(path)
        source_format = family.torch_checkpoint
    model = model_from_flat_params(config, flat)
    optimizer = ckpt.get("optimizer") if keep_optimizer else None
    if keep_optimizer and not isinstance(optimizer, dict):
        raise ConversionError("--keep_optimizer: the checkpoint holds no optimizer state")
    tokenizer = tokenizer or source_format.default_tokenizer
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
    n_params = sum(int(np.prod(np.shape(v))) for v in flat_params(model).values())
    c = config
    summary = [
        f"converted {path} -> {written}",
        f"  model: {family.describe(c)}: n_layer={c.n_layer} n_embd={c.n_embd} n_head={c.n_head} "
        f"block_size={c.block_size} vocab_size={c.vocab_size}",
        f"  parameters: {n_params:,} (as stored: the vocabulary padded to a multiple of 64, a tied head once)",
        f"  dtype: {_array_dtypes(ckpt)} in the checkpoint -> float32 parameters",
        f"  iter_num: {meta['iter_num']}  best_val_loss: {meta['best_val_loss']}",
        f"  optimizer state: {'kept (torch_optimizer/)' if optimizer is not None else 'dropped (--keep_optimizer keeps it)'}",
        f"  tokenizer: {tokenizer or 'not recorded (pass --tokenizer when sampling)'}",
    ]
    return written, summary

