"""RWKV-4 against `transformers`' RwkvForCausalLM: logits, greedy decoding at constant cost per
token, prefill + decode, the Hugging Face and BlinkDL layouts of the same weights, bf16/fp16."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the test extra: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is the test extra: pip install -e '.[test]'")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from microrwkv_jax import load_model  # noqa: E402
from microrwkv_jax.sampling import generate  # noqa: E402
from microrwkv_jax.torch_checkpoint import ConversionError  # noqa: E402
from tests.helpers import rel_err  # noqa: E402

HF = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, context_length=64, intermediate_size=128)


def hf_model(seed=0):
    torch.manual_seed(seed)
    model = transformers.RwkvForCausalLM(transformers.RwkvConfig(**HF)).eval()
    with torch.no_grad():            # trained-scale values, strong and weak decays
        for name, p in model.named_parameters():
            if name.endswith("time_decay"):
                p.copy_(torch.linspace(-6.0, 2.0, p.numel()))
            else:
                p.add_(torch.randn(p.shape) * (0.1 if p.dim() >= 2 else 0.3))
    return model


def hf_logits(model, idx):
    """transformers' logits, without its cache (see the generation test for why)."""
    with torch.no_grad():
        return model(torch.tensor(np.asarray(idx), dtype=torch.long), use_cache=False).logits.numpy()


@nnx.jit
def jax_logits(model, idx):
    return model(idx)


@nnx.jit
def step_forward(model, x, state):
    return model.forward(x, state)


def tokens(seed, b, t):
    return jnp.asarray(np.random.default_rng(seed).integers(0, HF["vocab_size"], (b, t)), jnp.int32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = hf_model()
    path = tmp_path_factory.mktemp("hf") / "rwkv-tiny"
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize("b, t", [(2, 1), (2, 19), (3, 64)])
def test_logits_match_transformers(saved, b, t):
    hf, path = saved
    model, config = load_model(path)
    assert config.arch == "rwkv4" and config.n_layer == 2 and config.mlp_ratio == 4
    idx = tokens(10 * b + t, b, t)
    assert rel_err(jax_logits(model, idx), hf_logits(hf, idx)) <= 1e-5


def test_greedy_decoding_matches_transformers_generate(saved):
    hf, path = saved
    model, _ = load_model(path)
    prompt = np.asarray(tokens(5, 2, 7))
    # transformers' RWKV mixes batch rows in its one-token cached steps (batched and single-row logits
    # differ there), so each row is generated on its own as the reference.
    with torch.no_grad():
        expected = [hf.generate(torch.tensor(row[None], dtype=torch.long), max_new_tokens=32, do_sample=False,
                                pad_token_id=0).numpy()[0, 7:] for row in prompt]
    np.testing.assert_array_equal(generate(model, prompt, 32, temperature=0.0), np.stack(expected))


def test_prefill_then_decode_equals_the_full_forward(saved):
    _, path = saved
    model, _ = load_model(path)
    x = tokens(6, 2, 40)
    state = model.init_state(2, 40)
    logits, state, _ = step_forward(model, x[:, :17], state)
    outs = [logits]
    for i in range(17, 40):
        logits, state, _ = step_forward(model, x[:, i:i + 1], state)
        outs.append(logits)
    assert rel_err(jnp.concatenate(outs, axis=1), jax_logits(model, x)) <= 1e-5


def blinkdl_state_dict(hf, dtype=None):
    """The same weights under BlinkDL's names, as its RWKV-4 .pth files store them."""
    from microrwkv_jax.families.rwkv4.checkpoint_names import parameter_map, rwkv4_config
    config = rwkv4_config(HF["vocab_size"], HF["hidden_size"], HF["num_hidden_layers"], HF["intermediate_size"])
    sd = hf.state_dict()
    return {blink: (sd[name].to(dtype) if dtype is not None else sd[name].clone())
            for name, blink, _, _, _ in parameter_map(config)}


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
def test_the_blinkdl_layout_of_the_same_weights_gives_the_same_logits(saved, tmp_path, dtype):
    hf, path = saved
    pth = tmp_path / "RWKV-4-tiny.pth"
    torch.save(blinkdl_state_dict(hf, dtype), pth)
    model, config = load_model(pth)
    assert config.arch == "rwkv4" and config.vocab_size == 97 and config.n_embd == 32
    idx = tokens(7, 2, 21)
    if dtype is None:
        np.testing.assert_array_equal(np.asarray(jax_logits(model, idx)), np.asarray(jax_logits(load_model(path)[0], idx)))
    else:                              # the reference with the same rounded weights
        ref = hf_model()
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(p.to(dtype).float())
        assert rel_err(jax_logits(model, idx), hf_logits(ref, idx)) <= 1e-5


def test_a_partial_checkpoint_names_the_missing_tensor(saved, tmp_path):
    hf, _ = saved
    sd = blinkdl_state_dict(hf)
    del sd["blocks.1.ffn.value.weight"]
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(ConversionError) as err:
        load_model(tmp_path / "partial.pth")
    assert str(err.value) == "state dict does not match RWKV-4: missing: blocks.1.ffn.value.weight (1)"


def test_sample_cli_finds_the_tokenizer_beside_a_directory_and_asks_for_it_with_a_pth(tmp_path, capsys):
    from tests.helpers import load_script, make_tokenizer_json
    sample = load_script("sample.py").main
    tokenizer = make_tokenizer_json(tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    hf = transformers.RwkvForCausalLM(transformers.RwkvConfig(**{**HF, "vocab_size": 320})).eval()
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    args = ["--prompt", "Once upon a time", "--max_new_tokens", "4", "--temperature", "0", "--no_stop"]
    assert sample(["--ckpt", str(tmp_path / "hf"), *args]) == 0
    out_dir = capsys.readouterr().out
    from microrwkv_jax.families.rwkv4.checkpoint_names import parameter_map, rwkv4_config
    config = rwkv4_config(320, HF["hidden_size"], HF["num_hidden_layers"], HF["intermediate_size"])
    sd = hf.state_dict()
    torch.save({blink: sd[name] for name, blink, _, _, _ in parameter_map(config)}, tmp_path / "RWKV-4.pth")
    assert sample(["--ckpt", str(tmp_path / "RWKV-4.pth"), *args]) == 1
    assert capsys.readouterr().err == (f"sample.py: error: {tmp_path / 'RWKV-4.pth'}: the checkpoint does not say its "
                                       "tokenizer; name it (e.g. the model's tokenizer.json)\n")
    assert sample(["--ckpt", str(tmp_path / "RWKV-4.pth"), "--tokenizer", str(tokenizer), *args]) == 0
    assert capsys.readouterr().out == out_dir and out_dir.startswith("Once upon a time")
