"""RWKV-5 "Eagle" (BlinkDL's x052), for its pretrained checkpoints: run, sample at constant cost
per token, fine-tune. Presets rwkv5 (= rwkv5-0.4b), rwkv5-1.5b, rwkv5-3b, rwkv5-7b: the World
models' sizes (head size 64, the World tokenizer's 65,536 tokens)."""

from microrwkv_jax.decoding import generate_recurrent
from microrwkv_jax.families.family import Family, TorchCheckpointFormat
from microrwkv_jax.families.rwkv5 import checkpoint_names
from microrwkv_jax.families.rwkv5.model import RWKV5, check_config, forward_flops_per_token

TOKENIZER = "world"
# Logical axes of every parameter, for sharding (microrwkv_jax.sharding); the first matching glob wins.
SHELL_AXES = {
    "emb/embedding": ("vocab", "embed"),
    "head": ("vocab", "embed"),
    "ln*/*": ("embed",),
    "blocks/*/ln*/*": ("embed",),
    "blocks/*/att/output/kernel": ("heads", "embed"),
    "blocks/*/att/ln_x/*": ("heads",),
    "blocks/*/ffn/key/kernel": ("embed", "mlp"),
    "blocks/*/ffn/value/kernel": ("mlp", "embed"),
    "blocks/*/ffn/receptance/kernel": ("embed", "embed"),
    "blocks/*/ffn/*": ("embed",),                               # token-shift mixes
}
PARAM_AXES = {
    **SHELL_AXES,
    "blocks/*/att/*/kernel": ("embed", "heads"),                # receptance, key, value, gate
    "blocks/*/att/time_decay": ("heads", "embed"),              # [H, N]
    "blocks/*/att/time_faaaa": ("heads", "embed"),
    "blocks/*/att/time_mix_*": ("embed",),
}


def presets(sizes: dict, arch_fields: dict) -> dict:
    """{preset: ModelConfig fields} of BlinkDL World models of these {name: (layers, width)}."""
    return {name: dict(n_layer=layers, n_embd=width, n_head=width // 64, n_kv_head=1, vocab_size=65536,
                       block_size=4096, **arch_fields) for name, (layers, width) in sizes.items()}


PRESETS = presets({"rwkv5": (24, 1024), "rwkv5-0.4b": (24, 1024), "rwkv5-1.5b": (24, 2048),
                   "rwkv5-3b": (32, 2560), "rwkv5-7b": (32, 4096)}, {})

FAMILY = Family(
    arch="rwkv5",
    presets=PRESETS,
    model_class=RWKV5,
    check_config=check_config,
    forward_flops_per_token=forward_flops_per_token,
    recurrent=True,
    stateful_score=lambda config: True,
    generate=generate_recurrent,
    describe=lambda config: "RWKV-5",
    torch_checkpoint=TorchCheckpointFormat(recognizes=checkpoint_names.recognizes,
                                           read=checkpoint_names.read_checkpoint,
                                           parameter_map=checkpoint_names.parameter_map, default_tokenizer=TOKENIZER),
    param_axes=PARAM_AXES,
)
