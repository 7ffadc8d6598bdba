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

from configs.fine_tuning import fine_tuning_config


def get_config():
    # The rwkv4-14b preset's shapes (40 layers, 5120 wide, the Pile's 50,277 tokens).
    c = fine_tuning_config("rwkv4-14b", vocab_size=50277)
    c.init_from = "RWKV-4-Pile-14B.pth"     # BlinkDL's .pth or a Hugging Face directory
    c.out_dir = "out/finetune_rwkv4_14b"
    c.tokenizer = "byte"                    # set to the model's 20B_tokenizer.json
    c.batch_size = 8                        # 8 x 1024 tokens per step
    return c
