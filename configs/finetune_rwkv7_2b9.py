"""Fine-tune RWKV-7 2.9B (BlinkDL's RWKV-x070-World-2.9B) on local text with the chunked WKV, at the
4,096-token context the World models were trained with. Its float32 parameters, gradients and
AdamW moments need 16 bytes per parameter, 47 GB, so the mesh shards all of them over every
device (fsdp = -1, ZeRO-3); BENCHMARKS.md ("On a TPU, compiled here") has its per-chip memory
on a v5p:2x2x1 (4 chips of 95 GiB), compiled on a CPU-only machine.

    python train.py --config configs/finetune_rwkv7_2b9.py \\
        --config.init_from=RWKV-x070-World-2.9B-v3-20250211-ctx4096.pth --config.dataset='data/*.txt'
    # compile it for a TPU topology on any machine, without a TPU or the checkpoint:
    python bench.py train --config configs/finetune_rwkv7_2b9.py --compile_only --topology v5p:2x2x1
    # the cheap ways to adapt it: --config.tune=state (an initial WKV state per layer) or
    # --config.tune=lora (adapters of rank lora_rank on the matrices lora_targets names)

The model comes from the checkpoint; the `model` section names the same preset (rwkv7-2.9b),
which is what `bench.py train` builds.
"""

import ml_collections

from configs.tiny import base_config


def get_config():
    c = base_config()
    c.init_from = "RWKV-x070-World-2.9B.pth"   # BlinkDL's .pth (or a run directory)
    c.out_dir = "out/finetune_rwkv7_2b9"
    c.tokenizer = "world"                   # the World models' tokenizer (MICRORWKV_WORLD_VOCAB)
    c.dataset = "data/*.txt"
    c.data.document_windows = False         # windows anywhere in the token stream
    c.mesh.update(dict(data=1, fsdp=-1, tensor=1))   # every parameter and optimizer state over all devices
    c.batch_size = 8                        # rows per step: 8 x 4096 tokens (a multiple of the device count)
    c.num_train_steps = 1000
    c.learning_rate = 1e-5                  # fine-tuning: a small peak, short warmup
    c.min_learning_rate = 1e-6
    c.warmup_steps = 50
    c.eval_every = 200
    c.eval_batches = 10
    c.checkpoint_every = 200
    c.valid_story_samples = 0
    # The rwkv7-2.9b preset's shapes (32 layers, 2560 wide, 65,536 tokens, chunks of 16); None keeps the preset's.
    # remat: each block's activations recomputed in the backward pass; without it the step needs
    # 326 GiB of temporaries per v5p chip at 8 x 4096 (BENCHMARKS.md).
    none = lambda kind: ml_collections.FieldReference(None, field_type=kind)
    c.model = ml_collections.ConfigDict(dict(
        family="rwkv7-2.9b", vocab_size=65536, dtype="auto", remat=True, layers=none(tuple), block_size=none(int),
        n_layer=none(int), n_embd=none(int), n_head=none(int), n_kv_head=none(int), swa_window=none(int),
        gqa_window=none(int), num_experts=none(int), num_active_experts=none(int), expert_dim=none(int),
        mlp_ratio=none(int), bias=ml_collections.FieldReference(None, field_type=bool), chunk_size=none(int),
        rope_base=ml_collections.FieldReference(None, field_type=float)))
    return c
