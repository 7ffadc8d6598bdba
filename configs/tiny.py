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
    c.eval_only = False
    c.num_train_steps = 650
    c.max_train_minutes = ml_collections.FieldReference(None, field_type=float)   # stop early after this
    c.batch_size = 8                  # global batch, split over devices and processes
    c.grad_accum_steps = 1
    c.learning_rate = 3e-3
    c.min_learning_rate = 3e-4
    c.warmup_steps = 30
    c.weight_decay = 0.1
    c.beta1 = 0.9
    c.beta2 = 0.99
    c.grad_clip = 1.0
    c.moe_aux_weight = 0.01
    # Logits alive at a time in the fused head loss (None: 2^23 on CPU, 2^28 on GPU).
    c.loss_chunk_elements = ml_collections.FieldReference(None, field_type=int)
    c.eval_every = 50
    c.eval_batches = 4                # validation windows scored per eval: eval_batches * batch_size
    c.log_every = 10
    c.checkpoint_every = 100
    c.keep_checkpoints = 3
    c.peak_flops = ml_collections.FieldReference(None, field_type=float)   # for MFU; known GPUs are detected
    c.tokenizer = "byte"
    c.dataset = "stories"
    c.data = ml_collections.ConfigDict(dict(
        num_train_stories=40000, num_val_stories=400, story_seed=1234, val_fraction=0.02,
        text_field="text", tfds_data_dir=ml_collections.FieldReference(None, field_type=str),
        tfds_val_split="validation", cache_dir="data_cache"))
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
