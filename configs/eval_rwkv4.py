"""Evaluate a pretrained RWKV-4 (BlinkDL's .pth or a Hugging Face directory) on a dataset:
validation loss in nats per token, tokens scored, time.

    python train.py --config configs/eval_rwkv4.py --config.init_from=RWKV-4-Pile-169M-20220807-8023.pth \\
        --config.tokenizer=20B_tokenizer.json --config.dataset='data/*.txt'

The Pile models' tokenizer is GPT-NeoX-20B's BPE (`20B_tokenizer.json`, a Hugging Face tokenizer.json).
"""

from configs.eval_gpt2 import get_config as eval_config


def get_config():
    c = eval_config()
    c.init_from = "RWKV-4-Pile-169M.pth"     # BlinkDL's .pth or a Hugging Face directory
    c.out_dir = "out/eval_rwkv4"
    c.tokenizer = "20B_tokenizer.json"       # the model's tokenizer.json
    return c
