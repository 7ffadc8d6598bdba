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

from configs.fine_tuning import fine_tuning_config


def get_config():
    # The rwkv7-2.9b preset's shapes (32 layers, 2560 wide, 65,536 tokens, 4,096-token windows,
    # chunks of 16). remat: each block's activations recomputed in the backward pass; without it
    # the step needs 326 GiB of temporaries per v5p chip at 8 x 4096 (BENCHMARKS.md).
    c = fine_tuning_config("rwkv7-2.9b", vocab_size=65536, remat=True)
    c.init_from = "RWKV-x070-World-2.9B.pth"   # BlinkDL's .pth (or a run directory)
    c.out_dir = "out/finetune_rwkv7_2b9"
    c.tokenizer = "world"                   # the World models' tokenizer
    c.batch_size = 8                        # 8 x 4096 tokens per step
    return c
