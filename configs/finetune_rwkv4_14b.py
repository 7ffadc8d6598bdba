"""Fine-tune RWKV-4 14B (BlinkDL's Pile model) on local text: a model that fits no single device.
Its float32 parameters, gradients and AdamW moments need 16 bytes per parameter, 224 GB, so the
mesh shards all of them over every device (fsdp = -1, ZeRO-3): on a v5p-8 (4 chips of 95 GiB)
that is 56 GB of state per chip, plus activations (BENCHMARKS.md, "Models bigger than one device").

    python train.py --config configs/finetune_rwkv4_14b.py --config.init_from=RWKV-4-Pile-14B.pth \\
        --config.tokenizer=20B_tokenizer.json --config.dataset='data/*.txt'
    # compile it for a TPU topology on any machine, without a TPU or the checkpoint:
    python bench.py train --config configs/finetune_rwkv4_14b.py --compile_only --topology v5p:2x2x1

The model comes from the checkpoint; the `model` section names the same preset (rwkv4-14b), which
is what `bench.py train` builds.
"""

import ml_collections

from configs.tiny import base_config


def get_config():
    c = base_config()
    c.init_from = "RWKV-4-Pile-14B.pth"     # BlinkDL's .pth or a Hugging Face directory
    c.out_dir = "out/finetune_rwkv4_14b"
    c.tokenizer = "byte"                    # set to the model's 20B_tokenizer.json
    c.dataset = "data/*.txt"
    c.data.document_windows = False         # windows anywhere in the token stream
    c.mesh.update(dict(data=1, fsdp=-1, tensor=1))   # every parameter and optimizer state over all devices
    c.batch_size = 8                        # rows per step: 8 x 1024 tokens (a multiple of the device count)
    c.num_train_steps = 1000
    c.learning_rate = 1e-5                  # fine-tuning: a small peak, short warmup
    c.min_learning_rate = 1e-6
    c.warmup_steps = 50
    c.eval_every = 200
    c.eval_batches = 10
    c.checkpoint_every = 200
    c.valid_story_samples = 0
    # The rwkv4-14b preset's shapes (40 layers, 5120 wide, the Pile's 50,277 tokens); None keeps the preset's.
    none = lambda kind: ml_collections.FieldReference(None, field_type=kind)
    c.model = ml_collections.ConfigDict(dict(
        family="rwkv4-14b", vocab_size=50277, dtype="auto", layers=none(tuple), block_size=none(int),
        n_layer=none(int), n_embd=none(int), n_head=none(int), n_kv_head=none(int), swa_window=none(int),
        gqa_window=none(int), num_experts=none(int), num_active_experts=none(int), expert_dim=none(int),
        mlp_ratio=none(int), bias=ml_collections.FieldReference(None, field_type=bool), chunk_size=none(int),
        rope_base=ml_collections.FieldReference(None, field_type=float)))
    return c
