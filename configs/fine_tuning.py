"""What the configs that fine-tune a large pretrained checkpoint share (configs/finetune_*.py):
`fine_tuning_config(preset, vocab_size, **model fields)`. Not a config to run by itself."""

import ml_collections

from configs.tiny import base_config


def fine_tuning_config(family: str, vocab_size: int, **model_fields) -> ml_collections.ConfigDict:
    """What the configs that fine-tune a large pretrained checkpoint share: local text read as
    one stream, every parameter and its optimizer state sharded over all devices (fsdp = -1,
    ZeRO-3), a small learning rate with a short warmup; the `model` section names the preset of
    the checkpoint's shapes (what `bench.py train` builds), None everywhere else: the preset's."""
    c = base_config()
    c.dataset = "data/*.txt"
    c.data.document_windows = False         # windows anywhere in the token stream
    c.mesh.update(dict(data=1, fsdp=-1, tensor=1))   # every parameter and optimizer state over all devices
    c.batch_size = 8                        # rows per step (a multiple of the device count)
    c.num_train_steps = 1000
    c.learning_rate = 1e-5                  # fine-tuning: a small peak, short warmup
    c.min_learning_rate = 1e-6
    c.warmup_steps = 50
    c.eval_every = 200
    c.eval_batches = 10
    c.checkpoint_every = 200
    c.valid_story_samples = 0
    none = lambda kind: ml_collections.FieldReference(None, field_type=kind)
    c.model = ml_collections.ConfigDict(dict(
        family=family, vocab_size=vocab_size, dtype="auto", remat=False, layers=none(tuple), block_size=none(int),
        n_layer=none(int), n_embd=none(int), n_head=none(int), n_kv_head=none(int), swa_window=none(int),
        gqa_window=none(int), num_experts=none(int), num_active_experts=none(int), expert_dim=none(int),
        mlp_ratio=none(int), bias=ml_collections.FieldReference(None, field_type=bool), chunk_size=none(int),
        rope_base=ml_collections.FieldReference(None, field_type=float)))
    c.model.update(model_fields)
    return c
