"""OpenAI's GPT-2 (124M to 1.5B), for its pretrained checkpoints: run, evaluate, sample with a
key/value cache and fine-tune. Presets gpt2, gpt2-medium, gpt2-large, gpt2-xl."""

from microrwkv_jax.decoding import generate_recurrent
from microrwkv_jax.families.family import Family, HFCheckpointFormat
from microrwkv_jax.families.gpt2 import hf_names
from microrwkv_jax.families.gpt2.flops import forward_flops_per_token
from microrwkv_jax.families.gpt2.model import GPT2, check_config
from microrwkv_jax.layers.attention import CausalSelfAttention
from microrwkv_jax.layers.mlp import MLP
from microrwkv_jax.sharding import under

# Logical axes of every parameter, for sharding (microrwkv_jax.sharding): Megatron's split of
# attention heads and MLP hidden units over the tensor axis (the layers declare it), the rest by FSDP.
PARAM_AXES = {
    "wte/embedding": ("vocab", "embed"),
    "wpe/embedding": ("positions", "embed"),
    "*ln_*/*": ("embed",),                                      # ln_1, ln_2, ln_f: scale and bias
    **under("blocks/*/attn", CausalSelfAttention.PARAM_AXES),
    **under("blocks/*/mlp", MLP.PARAM_AXES),
}

_SIZES = {"gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20), "gpt2-xl": (48, 1600, 25)}
PRESETS = {name: dict(n_layer=layers, n_embd=width, n_head=heads, n_kv_head=heads, block_size=1024, vocab_size=50257,
                      mlp_ratio=4, bias=True) for name, (layers, width, heads) in _SIZES.items()}


def generate(model, prompt, max_new_tokens, *args):
    """Recurrent decoding with the key/value cache, within the learned positions (block_size)."""
    limit = model.config.block_size
    if prompt.shape[1] + max_new_tokens > limit:
        raise ValueError(f"max_new_tokens={max_new_tokens}: the prompt's {prompt.shape[1]} tokens plus the new ones "
                         f"exceed GPT-2's {limit} learned positions")
    return generate_recurrent(model, prompt, max_new_tokens, *args)


FAMILY = Family(
    arch="gpt2",
    presets=PRESETS,
    model_class=GPT2,
    check_config=check_config,
    forward_flops_per_token=forward_flops_per_token,
    recurrent=True,
    generate=generate,
    describe=lambda config: "GPT-2",
    hf_checkpoint=HFCheckpointFormat(model_type="gpt2", read=hf_names.read_checkpoint,
                                     parameter_map=hf_names.parameter_map),
    param_axes=PARAM_AXES,
)
