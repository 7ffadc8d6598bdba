#!/usr/bin/env python
"""python convert_torch_ckpt.py out/ckpt-500.pth [--out DIR] [--force] [--keep_optimizer]
python convert_torch_ckpt.py out --to pth [--out FILE.pth] [--force]

Converts a PyTorch checkpoint (the published MicroRWKV's, BlinkDL's RWKV-4/5/6/7) or a Hugging
Face directory (GPT-2, RWKV-4) into a model directory that
`sample.py --ckpt DIR`, `train.py --config.init_from=DIR` and `microrwkv_jax.load_model` read,
without importing torch. With `--to pth`, the reverse: a run directory (its newest checkpoint)
or a model directory of an RWKV-4/5/6/7 model, written as BlinkDL's `.pth` state dict.
"""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="convert_torch_ckpt.py",
                                     description="Convert a PyTorch checkpoint (.pth) or a Hugging Face "
                                                 "directory into an orbax model directory, without importing torch.")
    parser.add_argument("checkpoint", help="the .pth file (e.g. out/ckpt-500.pth) or a Hugging Face directory")
    parser.add_argument("--out", help="output directory (default: the .pth path without its extension, or "
                                      "DIR-converted for a directory)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.add_argument("--keep_optimizer", action="store_true", help="also keep the torch optimizer state")
    parser.add_argument("--tokenizer", default=None, help="tokenizer recorded for sampling: byte, gpt2, world, "
                        "a tokenizer.json or a World vocabulary .txt path (default: the family's: gpt2 for the "
                        "published model, world for RWKV-5/6/7)")
    parser.add_argument("--to", choices=["model_dir", "pth"], default="model_dir",
                        help="model_dir (default): a .pth or Hugging Face directory into a model directory; pth: a run "
                             "or model directory of an RWKV-4/5/6/7 into BlinkDL's .pth (default: DIR.pth)")
    args = parser.parse_args(argv)
    try:
        if args.to == "pth":
            from microrwkv_jax.export import export_to_pth
            _, summary = export_to_pth(args.checkpoint, args.out, args.force)
        else:
            from microrwkv_jax.convert import convert_to_model_dir
            _, summary = convert_to_model_dir(args.checkpoint, args.out, args.force, args.keep_optimizer,
                                              args.tokenizer)
    except (OSError, ValueError) as err:       # CheckpointFormatError and ConversionError are ValueErrors
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, FileNotFoundError) and err.filename:
            message = f"{err.filename}: no such file"
        print(f"convert_torch_ckpt.py: error: {message}", file=sys.stderr)
        return 1
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
