"""The default demo: a small causal hybrid on the built-in story corpus, byte tokens, CPU-sized
(about 9 minutes on 2 CPU cores; see the README for what it reaches).

    python train.py --config configs/tiny.py
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Every key a config has; the other configs start from this and change what differs."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.out_dir = "out"                 # the run directory: checkpoints/, metrics.jsonl
    c.init_from = "scratch"           # or a checkpoint: a model dir, a run dir or a published .pth
    c.eval_only = False               # True: score the checkpoint on the held-out data, train nothing
    c.num_train_steps = 650           # about 9 minutes on 2 CPU cores for the tiny hybrid
    c.max_train_minutes = ml_collections.FieldReference(None, field_type=float)   # stop early after this
    c.batch_size = 8                  # global batch, split over devices and processes
    c.grad_accum_steps = 1            # micro-batches per step (each batch_size / grad_accum_steps rows)
    c.learning_rate = 5e-3            # AdamW peak, after a linear warmup (3e-3 ended 3% higher here)
    c.min_learning_rate = 3e-4        # the end of the cosine decay
    c.warmup_steps = 30
    c.weight_decay = 0.1              # on the matrices of linear maps only
    c.beta1 = 0.9
    c.beta2 = 0.99
    c.grad_clip = 1.0                 # global gradient-norm clipping
    c.moe_aux_weight = 0.01           # weight of the MoE load-balancing loss
    # Logits alive at a time in the fused head loss (None: 2^23 on CPU, 2^28 on GPU).
    c.loss_chunk_elements = ml_collections.FieldReference(None, field_type=int)
    c.eval_every = 100                # steps between evaluations (loss and, on stories, valid stories)
    c.eval_batches = 4                # validation windows scored per eval: eval_batches * batch_size
    c.valid_story_samples = 64        # stories sampled per eval on the built-in corpus (0: none)
    c.log_every = 10                  # steps between metrics.jsonl lines
    c.checkpoint_every = 100          # steps between checkpoints (an evaluation also saves one)
    c.keep_checkpoints = 3            # the newest ones kept, plus the best by validation loss
    c.peak_flops = ml_collections.FieldReference(None, field_type=float)   # for MFU; known GPUs are detected
    # JAX's persistent compilation cache (microrwkv_jax/compilation_cache.py says where): a repeated
    # or resumed run loads its compiled steps instead of compiling them again.
    c.compilation_cache = True
    c.tokenizer = "byte"              # byte, gpt2 or a tokenizer.json path
    c.dataset = "stories"             # the built-in corpus, a path/glob of .txt/.jsonl, or tfds:NAME
    c.data = ml_collections.ConfigDict()
    c.data.num_train_stories = 40000  # built-in corpus: stories generated for training
    c.data.num_val_stories = 400      # built-in corpus: held-out stories (their entropy floor is exact)
    c.data.story_seed = 1234          # built-in corpus: the grammar's random seed
    c.data.val_fraction = 0.02        # other sources: documents held out for validation
    c.data.text_field = "text"        # .jsonl and TFDS sources: the field holding the text
    c.data.tfds_data_dir = ml_collections.FieldReference(None, field_type=str)   # TFDS: where it was prepared
    c.data.tfds_val_split = "validation"   # TFDS: the held-out split
    c.data.cache_dir = "data_cache"   # tokenised token files, made once and reused
    # Training windows start at a document boundary (end-of-text), so that every window holds a
    # whole story from its first token, as a sample does (False: anywhere in the stream). On this
    # corpus it takes the tiny hybrid from +33% to +12% above the floor at 650 steps (README).
    c.data.document_windows = True
    # The device mesh (microrwkv_jax/sharding.py): data x fsdp x tensor = the device count, -1 on
    # one axis for "the rest". data: batch split, parameters replicated. fsdp: batch split and every
    # parameter and its optimizer state split too (a model larger than one device). tensor: heads
    # and hidden units split. The default is plain data parallelism over every device.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.distributed = ml_collections.ConfigDict(dict(
        coordinator_address=ml_collections.FieldReference(None, field_type=str),
        num_processes=ml_collections.FieldReference(None, field_type=int),
        process_id=ml_collections.FieldReference(None, field_type=int)))
    c.model = ml_collections.ConfigDict(dict(
        family="hybrid", layers=ml_collections.FieldReference(None, field_type=tuple),
        vocab_size=ml_collections.FieldReference(None, field_type=int),
        block_size=384, n_layer=4, n_embd=128, n_head=4, n_kv_head=1, swa_window=64,
        gqa_window=ml_collections.FieldReference(None, field_type=int), num_experts=4, num_active_experts=2,
        expert_dim=128, mlp_ratio=4, bias=False, chunk_size=32, rope_base=10000.0, dtype="auto"))
    return c


def get_config():
    return base_config()
