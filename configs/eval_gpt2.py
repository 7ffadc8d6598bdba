"""Evaluate a pretrained GPT-2 (a Hugging Face directory: config.json + model.safetensors or
pytorch_model.bin) on a dataset: validation loss in nats per token, tokens scored, time.

    python train.py --config configs/eval_gpt2.py --config.init_from=path/to/gpt2 --config.dataset='data/*.txt'

The model's sizes come from the checkpoint; `model.dtype` ("auto": bf16 on accelerators) is the only
model key read. Every held-out window is scored (eval_batches=None).
"""

import ml_collections

from configs.tiny import base_config


def get_config():
    c = base_config()
    c.eval_only = True
    c.init_from = "gpt2"              # a checkpoint directory (or .pth) to evaluate
    c.out_dir = "out/eval_gpt2"       # metrics.jsonl gets one "eval_only" record
    c.tokenizer = "gpt2"              # GPT-2's BPE (offline: MICRORWKV_GPT2_BPE, see README)
    c.dataset = "data/*.txt"          # any dataset the pipeline reads: .txt/.jsonl files, tfds:NAME, stories
    c.batch_size = 8                  # windows scored per device call
    c.eval_batches = ml_collections.FieldReference(None, field_type=int)   # None: every held-out window
    # The parameters' dtype: "bfloat16" holds a bf16 checkpoint (BlinkDL's, most HF ones) at half the
    # memory of float32 and loses nothing (its values are bf16 already): RWKV-4 7B needs 14 GB, not 28.
    c.param_dtype = "float32"
    return c
