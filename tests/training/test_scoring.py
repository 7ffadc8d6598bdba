"""The held-out text's scores: every target scored exactly once, with the context promised."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from microrwkv_jax import build_model
from microrwkv_jax.checkpoints import ParamCodec
from microrwkv_jax.training import scoring
from microrwkv_jax.training.steps import make_piece_score
from tests.helpers import rel_err, tiny_config


@pytest.mark.parametrize("num_tokens", [2, 3, 9, 64, 65, 66, 101, 1000])
@pytest.mark.parametrize("block,stride", [(8, 4), (8, 8), (64, 32), (7, 3), (5, 1)])
def test_windows_score_every_target_once_with_at_least_block_minus_stride_context(num_tokens, block, stride):
    stream = np.arange(num_tokens, dtype=np.int32) + 1000
    windows = scoring.Windows(stream, block, stride)
    seen = np.zeros(num_tokens, int)
    for inputs, targets in windows.batches(3):
        assert inputs.shape == targets.shape == (3, block)
        rows, cols = np.nonzero(targets >= 0)
        np.testing.assert_array_equal(inputs[rows, cols], targets[rows, cols] - 1)   # target t read after token t-1
        position = targets[rows, cols] - 1000
        np.add.at(seen, position, 1)
        later = position > block          # beyond the first window: at least block - stride tokens before it
        assert np.all(cols[later] >= block - stride)
    assert seen[0] == 0 and np.all(seen[1:] == 1)
    assert windows.num_targets == num_tokens - 1


def test_a_stride_outside_the_window_is_refused():
    with pytest.raises(ValueError, match=r"^stride=9: must be between 1 and block=8$"):
        scoring.Windows(np.arange(20), 8, 9)


def test_carrying_the_state_scores_as_one_forward_pass_over_the_whole_text():
    """Pure RWKV scored piece by piece, state carried, equals one pass over the whole stream
    (float64 log-softmax of its logits), whatever the piece length."""
    config = tiny_config("rwkv", block_size=32)
    model = build_model(config, seed=3)
    codec = ParamCodec(model)
    params = codec.flat(model)
    stream = np.random.default_rng(0).integers(0, 97, 150).astype(np.int32)
    logits, _, _ = model.forward(jnp.asarray(stream[None, :-1]), model.init_state(1, 200))
    logp = jax.nn.log_softmax(np.asarray(logits[0], np.float64), axis=-1)
    expected = -float(np.sum(np.asarray(logp)[np.arange(149), stream[1:]]))
    score = jax.jit(make_piece_score(codec))
    for piece in (16, 37, 256):
        nats, count = scoring.score_carrying_state(lambda state, x, y: score(params, state, x, y),
                                                   model.init_state(1, piece), stream, piece)
        assert count == 149 and rel_err(nats, expected) < 1e-5


def test_a_score_in_every_unit():
    record = scoring.score_record("full", 1000.0, 500, 800, 700)
    assert record == {"full_nats_per_token": 2.0, "full_nats_per_byte": 1.25, "full_bits_per_byte": 1.25 / np.log(2),
                      "full_nats_per_char": 1000 / 700, "full_tokens": 500}
