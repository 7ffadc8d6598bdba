"""RWKV-4 (BlinkDL's RWKV-LM; `transformers`' RwkvForCausalLM), for its pretrained checkpoints:
run, sample at constant cost per token, fine-tune. Presets rwkv4 (= rwkv4-169m), rwkv4-430m, rwkv4-1b5,
rwkv4-3b, rwkv4-7b, rwkv4-14b: the Pile models' sizes."""

from microrwkv_jax.decoding import generate_recurrent
from microrwkv_jax.families.family import Family, HFCheckpointFormat, TorchCheckpointFormat
from microrwkv_jax.families.rwkv4 import checkpoint_names
from microrwkv_jax.families.rwkv4.flops import forward_flops_per_token
from microrwkv_jax.families.rwkv4.model import RWKV4, check_config

# Logical axes of every parameter, for sharding (microrwkv_jax.sharding). RWKV-4's time mixing
# is per channel (one "head" of C channels), so its channels split over the tensor axis.
PARAM_AXES = {
    "emb/embedding": ("vocab", "embed"),
    "head": ("vocab", "embed"),
    "ln*/*": ("embed",),                                        # ln0, ln_out
    "blocks/*/ln*/*": ("embed",),
    "blocks/*/att/output/kernel": ("heads", "embed"),
    "blocks/*/att/*/kernel": ("embed", "heads"),                # key, value, receptance
    "blocks/*/att/time_decay": ("heads",),
    "blocks/*/att/time_first": ("heads",),
    "blocks/*/time_mix_*": ("embed",),
    "blocks/*/ffn/key/kernel": ("embed", "mlp"),
    "blocks/*/ffn/value/kernel": ("mlp", "embed"),
    "blocks/*/ffn/receptance/kernel": ("embed", "embed"),
}

# The Pile models use GPT-NeoX-20B's BPE (20B_tokenizer.json): a HF directory's tokenizer.json is
# found beside it; for a BlinkDL .pth the user names it (sample.py --tokenizer, config.tokenizer).
TOKENIZER = None
_SIZES = {"rwkv4": (12, 768), "rwkv4-169m": (12, 768), "rwkv4-430m": (24, 1024), "rwkv4-1b5": (24, 2048),
          "rwkv4-3b": (32, 2560), "rwkv4-7b": (32, 4096), "rwkv4-14b": (40, 5120)}
PRESETS = {name: dict(n_layer=layers, n_embd=width, n_head=1, n_kv_head=1, mlp_ratio=4, vocab_size=50277,
                      block_size=1024) for name, (layers, width) in _SIZES.items()}

FAMILY = Family(
    arch="rwkv4",
    presets=PRESETS,
    model_class=RWKV4,
    check_config=check_config,
    forward_flops_per_token=forward_flops_per_token,
    recurrent=True,
    stateful_score=lambda config: True,
    generate=generate_recurrent,
    describe=lambda config: "RWKV-4",
    torch_checkpoint=TorchCheckpointFormat(recognizes=checkpoint_names.recognizes_blinkdl,
                                           read=checkpoint_names.read_blinkdl_checkpoint,
                                           parameter_map=checkpoint_names.parameter_map, default_tokenizer=TOKENIZER),
    param_axes=PARAM_AXES,
    hf_checkpoint=HFCheckpointFormat(model_type="rwkv", read=checkpoint_names.read_hf_checkpoint,
                                     parameter_map=checkpoint_names.parameter_map, default_tokenizer=TOKENIZER),
)
