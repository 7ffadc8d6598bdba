"""The published architecture against the PyTorch reference: logits, faults, greedy decoding."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the test extra: pip install -e '.[test]'")

from microrwkv_jax import load_model  # noqa: E402
from microrwkv_jax.convert import convert_to_model_dir  # noqa: E402
from microrwkv_jax.families.published.sampling import last_logits_rowwise  # noqa: E402
from microrwkv_jax.sampling import generate  # noqa: E402
from tests.families.published_helpers import jax_logits, random_tokens, torch_logits, torch_model  # noqa: E402
from tests.helpers import rel_err  # noqa: E402
from torch_reference.published import save_published_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tm, args = torch_model(0)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt-500.pth"
    save_published_checkpoint(path, tm, args, prefix="_orig_mod.")
    convert_to_model_dir(path)
    model, config = load_model(path.with_suffix(""))
    return tm, model, config, path


@pytest.mark.parametrize("b", [1, 2, 3])
@pytest.mark.parametrize("t", [1, 7, 128, 256, 300])
def test_logits_match_pytorch(converted, b, t):
    tm, model, _, _ = converted
    idx = random_tokens(100 * b + t, b, t)
    assert rel_err(jax_logits(model, idx), torch_logits(tm, idx)) <= 1e-5


def test_faults_are_reproduced(converted):
    """The compatibility model is not causal and mixes batch rows, exactly like PyTorch."""
    tm, model, _, _ = converted
    idx = random_tokens(1, 2, 40)
    future = idx.at[:, 20:].set(random_tokens(2, 2, 20))
    ours = rel_err(jax_logits(model, future)[:, :20], jax_logits(model, idx)[:, :20])
    theirs = rel_err(torch_logits(tm, future)[:, :20], torch_logits(tm, idx)[:, :20])
    assert ours > 1e-4 and abs(ours - theirs) <= 1e-4 * theirs + 1e-6
    other_row = idx.at[1].set(random_tokens(3, 1, 40)[0])
    assert rel_err(jax_logits(model, other_row)[0], jax_logits(model, idx)[0]) > 1e-4


def test_greedy_decoding_matches_pytorch_generate(converted):
    tm, model, config, _ = converted
    prompt = random_tokens(9, 1, 5)
    # (12 tokens: the published sampler compiles each window length anew; the CI budget)
    expected = tm.generate(torch.tensor(np.array(prompt), dtype=torch.long), 12, top_k=1).numpy()
    ours = generate(model, np.asarray(prompt), max_new_tokens=12, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(ours), expected[:, 5:])


def test_sampler_runs_each_row_alone(converted):
    """The model mixes the rows of a batch; its sampler runs each row at batch 1, as PyTorch's
    `generate` samples one prompt, so a sample does not depend on the others drawn with it."""
    tm, model, _, _ = converted
    context = random_tokens(11, 3, 40)
    rowwise = np.asarray(last_logits_rowwise(model, context))
    for row in range(3):
        assert rel_err(rowwise[row], torch_logits(tm, context[row:row + 1])[0, -1]) <= 1e-5
    assert rel_err(rowwise, torch_logits(tm, context)[:, -1]) > 1e-4      # the batch forward mixes rows


def test_torch_reference_chunked_wkv_equals_its_token_loop():
    from torch_reference import published as ref
    g = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(2, 256, 3, 8, generator=g) for _ in range(3))
    w = torch.rand(3, generator=g).clamp(0.01, 0.999).view(1, 3, 1, 1)
    u = torch.randn(3, generator=g).view(1, 3, 1, 1)
    a, b = ref.wkv_chunked(r, k, v, w, u), ref.wkv_loop(r, k, v, w, u)
    assert rel_err(a.numpy(), b.numpy()) <= 1e-5
