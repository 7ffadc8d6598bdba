#!/usr/bin/env python
"""python convert_torch_ckpt.py out/ckpt-500.pth [--out DIR] [--force] [--keep_optimizer]

Converts a published MicroRWKV PyTorch checkpoint into a model directory that
`sample.py --ckpt DIR`, `train.py --config.init_from=DIR` and `microrwkv_jax.load_model` read.
"""

import sys

from microrwkv_jax.convert import main

if __name__ == "__main__":
    sys.exit(main())
