"""GPT-2 against `transformers`' GPT2LMHeadModel: logits, greedy decoding with the KV cache, every
checkpoint layout (safetensors, pytorch_model.bin, sharded), and bad checkpoints."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the test extra: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is the test extra: pip install -e '.[test]'")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from microrwkv_jax import load_model, model_config  # noqa: E402
from microrwkv_jax.families import train_flops_per_token  # noqa: E402
from microrwkv_jax.sampling import generate  # noqa: E402
from microrwkv_jax.torch_checkpoint import ConversionError  # noqa: E402
from tests.helpers import rel_err  # noqa: E402

HF = dict(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
          attn_pdrop=0.0)


def hf_model(seed=0):
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF)).eval()
    with torch.no_grad():              # trained-scale values, so that every path shows (biases, LayerNorms)
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * (0.05 if p.dim() >= 2 else 0.3))
    return model


def hf_logits(model, idx):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(idx), dtype=torch.long)).logits.numpy()


@nnx.jit
def jax_logits(model, idx):
    return model(idx)


def tokens(seed, b, t):
    return jnp.asarray(np.random.default_rng(seed).integers(0, HF["vocab_size"], (b, t)), jnp.int32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = hf_model()
    path = tmp_path_factory.mktemp("hf") / "gpt2-tiny"
    model.save_pretrained(path)          # config.json + model.safetensors (lm_head tied, not stored)
    return model, path


@pytest.mark.parametrize("b, t", [(1, 1), (2, 17), (3, 64)])
def test_logits_match_transformers(saved, b, t):
    hf, path = saved
    model, config = load_model(path)
    assert config.arch == "gpt2" and config.n_layer == 2 and config.block_size == 64
    idx = tokens(10 * b + t, b, t)
    assert rel_err(jax_logits(model, idx), hf_logits(hf, idx)) <= 1e-5


@pytest.mark.parametrize("layout", ["bin", "sharded-safetensors", "sharded-bin"])
def test_every_checkpoint_layout_loads_the_same_model(saved, tmp_path, layout):
    hf, _ = saved
    path = tmp_path / layout
    hf.save_pretrained(path, safe_serialization=not layout.endswith("bin"),
                       max_shard_size="20KB" if layout.startswith("sharded") else "10GB")
    index = list(path.glob("*.index.json"))
    assert bool(index) == layout.startswith("sharded")
    model, _ = load_model(path)
    idx = tokens(3, 2, 9)
    assert rel_err(jax_logits(model, idx), hf_logits(hf, idx)) <= 1e-5


def test_greedy_decoding_with_the_cache_matches_transformers_generate(saved):
    hf, path = saved
    model, _ = load_model(path)
    prompt = np.asarray(tokens(5, 2, 7))
    with torch.no_grad():
        expected = hf.generate(torch.tensor(prompt, dtype=torch.long), max_new_tokens=40, do_sample=False,
                               pad_token_id=0).numpy()[:, 7:]
    np.testing.assert_array_equal(generate(model, prompt, 40, temperature=0.0), expected)
    with pytest.raises(ValueError, match=r"^max_new_tokens=60: the prompt's 7 tokens plus the new ones exceed"):
        generate(model, prompt, 60, temperature=0.0)


def test_bad_checkpoints_are_refused_in_one_line(saved, tmp_path):
    hf, path = saved
    bad = tmp_path / "bad"
    hf.save_pretrained(bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "n_embd": 48}))
    with pytest.raises(ConversionError, match=r"^state dict does not match GPT-2: mis-shaped: wte.weight"):
        load_model(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "activation_function": "relu"}))
    with pytest.raises(ConversionError, match=r"activation_function='relu'; GPT-2 uses gelu_new"):
        load_model(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(ConversionError, match=r"model_type='bert'; expected one of \['gpt2', 'rwkv'\]"):
        load_model(bad)
    index = tmp_path / "escape"
    hf.save_pretrained(index, max_shard_size="20KB")
    (index / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": "../x.safetensors"}}))
    with pytest.raises(ValueError, match=r"shard '../x.safetensors' is not a file of"):
        load_model(index)


def test_flops_count_its_matrices_and_causal_attention():
    c = model_config("gpt2", n_layer=2, n_embd=32, n_head=4, n_kv_head=4, block_size=64, vocab_size=97)
    t = 64
    per_layer = 2 * 12 * 32 * 32 + 2 * 2 * 32 * (t + 1) / 2
    assert train_flops_per_token(c, t) == 3 * (2 * per_layer + 2 * 32 * 128)


def test_sample_cli_reads_a_hugging_face_directory_with_the_gpt2_tokenizer(tmp_path, gpt2_bpe, monkeypatch, capsys):
    from tests.helpers import load_script
    monkeypatch.setenv("MICRORWKV_GPT2_BPE", str(gpt2_bpe))
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**HF, "vocab_size": 50257})).eval()
    hf.save_pretrained(tmp_path / "gpt2")
    assert load_script("sample.py").main(["--ckpt", str(tmp_path / "gpt2"), "--prompt", "One day",
                                          "--max_new_tokens", "5", "--temperature", "0", "--no_stop"]) == 0
    out, err = capsys.readouterr()
    prompt = [3198, 1110]                                    # "One day" in GPT-2's BPE
    with torch.no_grad():
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False, pad_token_id=0)[0, 2:]
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from microrwkv_jax.data.tokenizers import GPT2_PATTERN
    enc = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(gpt2_bpe)),
                            special_tokens={"<|endoftext|>": 50256})
    assert enc.encode_ordinary("One day") == prompt
    assert out == "One day" + enc.decode([int(t) for t in expected if t < 50256]) + "\n"
    assert "sample.py: 5 tokens generated" in err


def test_convert_a_hugging_face_directory_to_a_model_directory(saved, tmp_path):
    from tests.helpers import load_script
    hf, path = saved
    out = tmp_path / "converted"
    assert load_script("convert_torch_ckpt.py").main([str(path), "--out", str(out)]) == 0
    model, config = load_model(out)
    idx = tokens(4, 2, 11)
    assert config.arch == "gpt2" and rel_err(jax_logits(model, idx), hf_logits(hf, idx)) <= 1e-5
