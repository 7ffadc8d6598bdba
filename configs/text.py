"""Your own text on a CPU, in a few minutes: a small pure-RWKV model on a .txt read as written
(bytes, blank lines and line ends kept), its last 10% held out, trained for a wall-clock budget.

    python train.py --config configs/text.py --config.dataset=my.txt

The family, size, batch and schedule were chosen by measurement on real texts on a 2-core CPU
(BENCHMARKS.md, "Your own text on a CPU"): pure RWKV learns more per second here than the hybrid
or the GPT baseline. `max_train_minutes` drives the schedule: the learning rate decays to its
minimum when the budget ends, whatever the step count then.
"""

from configs.tiny import base_config


def get_config():
    c = base_config()
    c.dataset = "input.txt"           # your text: a .txt path or glob (--config.dataset=my.txt)
    c.data.val_fraction = 0.1         # its last 10% held out, contiguous (or give data.val_dataset)
    c.data.txt_split = "stream"       # the text as written: one stream of its bytes
    c.data.document_windows = False   # a stream has no documents: windows start anywhere
    c.max_train_minutes = 1.25        # the budget: the learning rate reaches its minimum when it ends
    c.num_train_steps = 100_000       # an upper bound; the budget ends the run first
    c.batch_size = 12                 # windows per step (a multiple of cpu_devices)
    c.cpu_devices = 2                 # one CPU device per core of a 2-core machine: the batch is split over them
    c.learning_rate = 2e-3            # AdamW peak, after warmup
    c.min_learning_rate = 1e-4        # reached when the budget ends
    c.warmup_steps = 50               # steps of linear warmup
    c.weight_decay = 0.1              # on the linear maps' matrices
    c.eval_every = 500                # steps between evaluations of the eval set (a prefix of the windows)
    c.eval_batches = 4                # eval set: the first eval_batches x batch_size held-out windows
    c.checkpoint_every = 1000         # steps between checkpoints (the last step always saves)
    c.valid_story_samples = 0         # (stories only)
    c.model.family = "rwkv"           # pure RWKV x051a: TimeMix + ChannelMix
    c.model.block_size = 64           # context of training windows (bytes; the state carries more when scoring)
    c.model.n_layer = 4               # blocks
    c.model.n_embd = 128              # width
    c.model.n_head = 4                # WKV heads (32 channels each)
    c.model.chunk_size = 32           # tokens per chunk of the chunked WKV
    return c
