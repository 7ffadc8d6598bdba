"""RWKV-7 "Goose" (x070) from scratch on the built-in stories, tiny size: BlinkDL's initialisation
(RWKV-LM's RWKV-v7/train_temp) and its chunked WKV. Its checkpoints sample in `sample.py` and,
exported with `python convert_torch_ckpt.py out --to pth`, in BlinkDL's `rwkv` package."""

from configs.tiny import base_config


def get_config():
    c = base_config()
    c.model.family = "rwkv7"          # the rwkv7 preset: pre-LayerNorm blocks, LoRA ranks by BlinkDL's rule for the width
    c.model.n_head = 2                # heads of 64 channels, as BlinkDL trains RWKV-7
    c.model.n_kv_head = 1             # RWKV-7 has no key/value heads
    c.model.chunk_size = 16           # tokens per chunk of the chunked WKV (bench.py wkv --decays rwkv7)
    return c
