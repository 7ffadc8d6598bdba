"""Evaluate a pretrained RWKV-7, RWKV-6 or RWKV-5 (BlinkDL's .pth; the generation is read from its
tensor names) on a dataset: validation loss per token, byte and character, tokens scored, time.

    python train.py --config configs/eval_rwkv7.py --config.init_from=RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth \\
        --config.dataset='data/*.txt'

These models use the RWKV World tokenizer (`world`: the vocabulary pyrwkv-tokenizer bundles; a path
to rwkv_vocab_v20230424.txt also works). A text file is read as one stream and its last
`data.val_fraction` scored with the state carried through it (every held-out token once).
"""

from configs.eval_gpt2 import get_config as eval_config


def get_config():
    c = eval_config()
    c.init_from = "RWKV-x070-World-0.1B.pth"     # BlinkDL's .pth (RWKV-5, 6 or 7)
    c.out_dir = "out/eval_rwkv7"
    c.tokenizer = "world"                         # the RWKV World tokenizer
    c.param_dtype = "bfloat16"                    # BlinkDL's files are bf16: half the memory, no loss
    return c
