"""The published table's model size (8 layers, 768 wide, 8 heads, block 1024) on TinyStories
from local files, GPT-2 tokens, as the causal hybrid.

    python train.py --config configs/tinystories.py --config.dataset='data/TinyStories*.txt'
"""

from configs.tiny import base_config


def get_config():
    c = base_config()
    c.tokenizer = "gpt2"
    c.dataset = "data/TinyStories-*.txt"     # TinyStoriesV2-GPT4-train.txt / -valid.txt style files
    c.data.txt_split = "eot"                 # TinyStories' files separate stories by <|endoftext|>
    c.data.document_windows = False          # windows anywhere: no scan of the whole corpus for boundaries
    c.num_train_steps = 20000
    c.batch_size = 16
    c.learning_rate = 6e-4
    c.min_learning_rate = 6e-5
    c.warmup_steps = 500
    c.eval_every = 500
    c.eval_batches = 20
    c.checkpoint_every = 500
    c.model.update(dict(block_size=1024, n_layer=8, n_embd=768, n_head=8, n_kv_head=2, swa_window=256,
                        num_experts=4, num_active_experts=2, expert_dim=512, chunk_size=64))
    return c
