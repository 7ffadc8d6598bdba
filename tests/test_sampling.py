"""Decoding and sampling: prefill, generate, and the sample.py command line."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from microrwkv_jax import LanguageModel, decoding, sampling
from microrwkv_jax.checkpoints import save_model_dir
from tests.helpers import REPO, load_script, rel_err, tiny_config

sample_cli = load_script("sample.py")


def make(family="hybrid", **overrides):
    return LanguageModel(tiny_config(family, vocab_size=257, **overrides), rngs=nnx.Rngs(1))


def prompt_tokens(seed, b, t):
    return np.random.default_rng(seed).integers(0, 256, size=(b, t)).astype(np.int32)


@nnx.jit
def step_forward(model, x, state):
    return model.forward(x, state)


@pytest.mark.parametrize("family", ["hybrid", "rwkv", "gpt"])
def test_parallel_prefill_leaves_the_state_of_token_by_token_decoding(family):
    model = make(family, gqa_window=None if family != "hybrid" else 12)
    prompt = prompt_tokens(0, 2, 77)      # a parallel piece of 64 tokens, then 13 one at a time
    logits, state = decoding.prefill(model, prompt, max_len=100)
    ref_state = model.init_state(2, decoding.cache_capacity(100))
    for i in range(77):
        ref_logits, ref_state, _ = step_forward(model, jnp.asarray(prompt[:, i:i + 1]), ref_state)
    assert rel_err(logits, ref_logits[:, 0]) <= 1e-5
    assert int(state["pos"]) == 77
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
        assert a.shape == b.shape
        if a.size and np.any(np.asarray(b)):
            assert rel_err(a, b) <= 1e-5


@pytest.mark.parametrize("length", [2, 65, 129])
def test_generation_after_any_prompt_length_equals_token_by_token_decoding(length):
    """generate() feeds a prompt's whole 64-token pieces in parallel and its rest inside the
    decoding loop: its greedy tokens equal feeding every token one at a time."""
    model = make("hybrid", gqa_window=None)
    prompt = prompt_tokens(9, 2, length)
    new = sampling.generate(model, prompt, 12, temperature=0.0)
    state = model.init_state(2, decoding.cache_capacity(length + 12))
    for i in range(length):
        logits, state, _ = step_forward(model, jnp.asarray(prompt[:, i:i + 1]), state)
    expected = []
    for _ in range(12):
        token = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
        expected.append(np.asarray(token))
        logits, state, _ = step_forward(model, token[:, None], state)
    np.testing.assert_array_equal(new, np.stack(expected, axis=1))


def test_greedy_is_deterministic_and_seeds_reproduce():
    model = make("hybrid")
    prompt = prompt_tokens(1, 1, 9)
    g1 = sampling.generate(model, prompt, 20, temperature=0.0)
    g2 = sampling.generate(model, prompt, 20, temperature=0.0)
    np.testing.assert_array_equal(g1, g2)
    s1 = sampling.generate(model, prompt, 20, temperature=1.0, top_k=50, seed=7)
    s2 = sampling.generate(model, prompt, 20, temperature=1.0, top_k=50, seed=7)
    s3 = sampling.generate(model, prompt, 20, temperature=1.0, top_k=50, seed=8)
    np.testing.assert_array_equal(s1, s2)
    assert not np.array_equal(s1, s3)


def test_batched_samples_equal_samples_drawn_one_at_a_time():
    model = make("rwkv")
    prompt = np.tile(prompt_tokens(2, 1, 11), (3, 1))
    batch = sampling.generate(model, prompt, 24, temperature=1.0, top_p=0.9, seed=5)
    for i in range(3):
        alone = sampling.generate(model, prompt[:1], 24, temperature=1.0, top_p=0.9, seed=5 + i)
        np.testing.assert_array_equal(batch[i], alone[0])
    assert not np.array_equal(batch[0], batch[1])


def test_new_prompt_lengths_and_options_do_not_recompile():
    """After one generation, any prompt up to block_size and any sampling options reuse the same
    two compiled programs (prefill and decode): piece sizes are branches of one program, options
    and seeds are traced, and caches start with room for the model's context."""
    model = make("gpt", gqa_window=None, block_size=300)        # a global-attention cache, a shape of its own
    sampling.generate(model, prompt_tokens(3, 1, 2), 20, temperature=0.0)
    sizes = (decoding.decode_block._cache_size(), decoding.prefill_piece._cache_size(), decoding.feed_piece._cache_size())
    for length, options in [(1, dict(temperature=1.0)), (3, dict(temperature=0.7, top_k=5)),
                            (41, dict(temperature=1.3, top_p=0.9)), (130, dict(temperature=0.0, top_k=2)),
                            (199, dict(temperature=0.5, top_k=50, top_p=0.5)), (300, dict(temperature=0.9))]:
        sampling.generate(model, prompt_tokens(4, 1, length), 20, seed=length, **options)
    assert (decoding.decode_block._cache_size(), decoding.prefill_piece._cache_size(), decoding.feed_piece._cache_size()) == sizes


def test_a_one_token_prompt_compiles_one_function():
    """From end-of-text (sample.py's default, story sampling), nothing is prefilled, and the first
    token (streamed alone) and the later blocks share one compiled loop."""
    model = make("rwkv", n_embd=48)          # a shape no other test compiles
    sizes = (decoding.decode_block._cache_size(), decoding.prefill_piece._cache_size(), decoding.feed_piece._cache_size())
    sampling.generate(model, prompt_tokens(6, 2, 1), 40, temperature=1.0)
    assert (decoding.decode_block._cache_size(), decoding.prefill_piece._cache_size(), decoding.feed_piece._cache_size()) == (sizes[0] + 1, *sizes[1:])


def test_stop_token_ends_rows_and_pads():
    model = make("rwkv")
    prompt = prompt_tokens(5, 2, 4)
    free = sampling.generate(model, prompt, 30, temperature=0.0)
    stop = int(free[0, 3])            # greedy row 0 emits this token at step 3
    out = sampling.generate(model, prompt, 30, temperature=0.0, stop_token=stop)
    first = list(out[0]).index(stop)
    assert first <= 3 and np.all(out[0, first:] == stop)
    np.testing.assert_array_equal(out[0, :first], free[0, :first])


def test_top_k_one_is_greedy_and_sample_logits_respects_top_p():
    logits = jnp.asarray([[0.0, 3.0, 1.0, 2.9]])
    keys = decoding.row_keys(0, 1, 0)
    assert int(decoding.sample_logits(logits, keys, 1.0, 1, None)[0]) == 1
    draws = {int(decoding.sample_logits(logits, decoding.row_keys(s, 1, 0), 1.0, None, 0.5)[0]) for s in range(40)}
    assert draws == {1, 3}


def test_traced_sampling_options_draw_what_numpy_says():
    """The options as traced values (one program for all of them): each keeps exactly the tokens
    a float64 numpy filter keeps, and temperature 0 is the argmax."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(1, 12)) * 2, jnp.float32)
    draw = jax.jit(lambda keys, t, k, p: decoding.sample_logits(logits, keys, t, k, p))

    def allowed(temperature, top_k, top_p):
        """{token: its probability after the filters}."""
        z = np.asarray(logits[0], np.float64) / temperature
        order = np.argsort(-z)[: top_k or len(z)]
        probs = np.exp(z[order] - z[order].max())
        probs /= probs.sum()
        keep = int(np.sum(np.cumsum(probs) < top_p)) + 1 if top_p < 1 else len(order)
        kept = probs[:keep] / probs[:keep].sum()
        return dict(zip(order[:keep].tolist(), kept))

    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.5, 0, 0.6), (1.0, 5, 0.8), (0.3, 12, 0.95)]:
        options = decoding.sampling_options(temperature, top_k, top_p)
        seen = {int(draw(decoding.row_keys(s, 1, 0), *options)[0]) for s in range(400)}
        expected = allowed(temperature, top_k, top_p)
        # Only tokens the filters keep are drawn, and every kept token of probability >= 3% is.
        assert seen <= set(expected) and {t for t, q in expected.items() if q >= 0.03} <= seen, (temperature, top_k, top_p)
    greedy = draw(decoding.row_keys(0, 1, 0), *decoding.sampling_options(0.0, 4, 0.5))
    assert int(greedy[0]) == int(np.argmax(np.asarray(logits[0])))
    assert draw._cache_size() == 1


# --- sample.py --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = make("hybrid")
    path = tmp_path_factory.mktemp("ckpt") / "story-model"
    save_model_dir(path, model, {"model": model.config.to_dict(), "tokenizer": "byte"})
    return path


def test_cli_streams_text_and_reports_speed(model_dir, capsys):
    assert sample_cli.main(["--ckpt", str(model_dir), "--prompt", "One day", "--max_new_tokens", "12",
                            "--temperature", "0", "--no_stop"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("One day") and out.endswith("\n")
    assert err.strip().splitlines()[-1].startswith("sample.py: 12 tokens generated, time to first token ")
    assert re.search(r"time to first token \d+ ms, [\d.]+ tokens/s after it \(\d+ ms in all\)$", err.strip())
    model = make("hybrid")
    expected = sampling.generate(model, np.asarray([list(b"One day")], np.int32), 12, temperature=0.0)
    assert out == "One day" + bytes(int(t) for t in expected[0] if t < 256).decode("utf-8", "replace") + "\n"


def test_cli_published_generate_aliases(model_dir, capsys):
    out_dir = model_dir.parent
    assert sample_cli.main(["--out_dir", str(out_dir), "--model_name", "story-model", "--max_num_tokens", "5",
                            "--temperature", "0", "--no_stop", "--num_samples", "2"]) == 0
    out, err = capsys.readouterr()
    assert "sample.py: 10 tokens generated" in err
    assert out.count("---------------") == 1


@pytest.mark.parametrize("argv, message", [
    (["--ckpt", "/nonexistent/ckpt"], "/nonexistent/ckpt: no such checkpoint"),
    (["--out_dir", "/nonexistent/out"], "/nonexistent/out: no such checkpoint (train one with train.py, or pass --ckpt)"),
    (["--max_new_tokens", "0"], "--max_new_tokens=0: must be >= 1"),
    (["--temperature", "nan"], "--temperature=nan: must be a finite number"),
    (["--temperature", "inf"], "--temperature=inf: must be a finite number"),
    (["--top_p", "nan"], "--top_p=nan: must be a finite number"),
    (["--model_name", "nope", "--out_dir", "/nonexistent"],
     "--model_name nope: none of /nonexistent/nope, /nonexistent/nope.pth, /nonexistent/nope.pt exists"),
])
def test_cli_bad_input(argv, message, capsys):
    assert sample_cli.main(argv) == 1
    assert capsys.readouterr().err == f"sample.py: error: {message}\n"


def test_cli_long_prompts_are_refused_above_the_limit_and_announced_below_it(model_dir, capsys):
    assert sample_cli.main(["--ckpt", str(model_dir), "--prompt", "a" * 70, "--max_prompt_tokens", "64"]) == 1
    assert capsys.readouterr().err == ("sample.py: error: --prompt: 70 tokens, more than --max_prompt_tokens=64; "
                                       "raise it to prefill them anyway\n")
    assert sample_cli.main(["--ckpt", str(model_dir), "--prompt", "a" * 70, "--max_new_tokens", "2", "--no_stop"]) == 0
    err = capsys.readouterr().err
    assert "sample.py: the prompt's 70 tokens exceed block_size=32; prefilling them in 2 pieces" in err


@pytest.mark.slow
def test_cli_unencodable_prompt_and_exit_status(model_dir):
    done = subprocess.run([sys.executable, str(REPO / "sample.py"), "--ckpt", str(model_dir), "--prompt", "caf\udce9"],
                          capture_output=True, text=True, cwd=REPO, errors="surrogateescape")
    assert done.returncode == 1
    assert done.stderr == ("sample.py: error: --prompt: character '\\udce9' at position 3 cannot be encoded "
                           "by the byte tokenizer\n")
    assert done.stdout == ""


def test_cli_refuses_a_checkpoint_with_non_finite_parameters(tmp_path, capsys):
    model = make("rwkv")
    model.wte.embedding[...] = model.wte.embedding[...].at[3, 5].set(jnp.nan)
    path = tmp_path / "nan-model"
    save_model_dir(path, model, {"model": model.config.to_dict(), "tokenizer": "byte"})
    assert sample_cli.main(["--ckpt", str(path), "--max_new_tokens", "4"]) == 1
    out, err = capsys.readouterr()
    assert err == f"sample.py: error: {path}: parameter wte/embedding holds non-finite values\n" and out == ""


@pytest.mark.parametrize("family", ["gpt", "hybrid"])
def test_caches_grow_as_generation_goes_and_decode_the_same_tokens(family):
    """Global attention's cache starts at the prompt's size and doubles as tokens come: the greedy
    tokens equal those of a step-by-step decode in a cache sized for everything up front."""
    model = make(family, gqa_window=None)
    prompt = prompt_tokens(7, 2, 250)
    new = sampling.generate(model, prompt, 300, temperature=0.0)          # capacity 256 -> 512 -> 1024
    state = model.init_state(2, 1024)
    logits, state = decoding.prefill_graph(*nnx.split(model), state, prompt)
    expected = []
    for _ in range(300):
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        expected.append(np.asarray(token))
        logits, state, _ = step_forward(model, token[:, None], state)
        logits = logits[:, 0]
    np.testing.assert_array_equal(new, np.stack(expected, axis=1))


def test_a_huge_max_new_tokens_does_not_allocate_for_the_worst_case():
    model = make("gpt", gqa_window=None)
    sizes = []
    original = model.init_state
    model.init_state = lambda batch, max_len: sizes.append(max_len) or original(batch, max_len)

    class Enough(Exception):
        pass

    def stop_after_three_blocks(tokens, seen=[]):
        seen.append(tokens)
        if len(seen) == 3:
            raise Enough

    with pytest.raises(Enough):
        sampling.generate(model, prompt_tokens(8, 1, 5), 10 ** 9, temperature=1.0, on_tokens=stop_after_three_blocks)
    assert sizes == [decoding.MIN_CAPACITY]


@pytest.mark.slow
def test_cli_samples_the_same_text_with_its_parameters_split_over_eight_devices(model_dir):
    """sample.py --fsdp 8 --tensor ... reads each parameter into its shards on 8 devices and
    decodes the same greedy text as one device."""
    run = lambda devices, *flags: subprocess.run(
        [sys.executable, str(REPO / "sample.py"), "--ckpt", str(model_dir), "--prompt", "One day",
         "--max_new_tokens", "24", "--temperature", "0", "--no_stop", *flags], cwd=REPO, capture_output=True,
        text=True, timeout=300, env={**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"})
    one = run(1)
    split = run(8, "--fsdp", "4", "--tensor", "2")
    assert one.returncode == 0 and split.returncode == 0, split.stderr[-2000:]
    assert split.stdout == one.stdout and len(one.stdout) > len("One day") + 10
    assert "parameters split over 8 devices in a mesh of data=1 x fsdp=4 x tensor=2" in split.stderr
    bad = run(8, "--fsdp", "3")
    assert bad.returncode == 1
    assert bad.stderr.strip() == ("sample.py: error: mesh data=-1, fsdp=3, tensor=1: 3 does not divide the device "
                                  "count, 8")
