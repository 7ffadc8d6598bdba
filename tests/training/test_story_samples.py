"""The valid-story rate: sampled stories parsed by the corpus's grammar."""

import numpy as np
from flax import nnx

from microrwkv_jax import LanguageModel
from microrwkv_jax.data import stories
from microrwkv_jax.data.tokenizers import get_tokenizer
from microrwkv_jax.training import story_samples
from tests.helpers import tiny_config

STORY = stories.sample_story(np.random.default_rng(5))[0]       # "One day, a brave bunny named Mia went ..."
HERO = STORY.split(" named ")[1].split(" ")[0]
# The hero's name changes midway: every sentence is still English, the story is not the grammar's.
SWITCHED = STORY.replace(HERO, "Zoe").replace("Zoe", HERO, 1)


def test_a_grammar_story_is_valid_and_a_corrupted_one_is_not():
    assert HERO == "Mia" and SWITCHED.count("Zoe") == STORY.count("Mia") - 1 >= 2
    assert stories.is_story(STORY)
    assert not stories.is_story(SWITCHED)
    assert not stories.is_story(STORY[:-1])             # cut short
    assert not stories.is_story(STORY.replace("a", "e", 1))
    assert story_samples.fraction_valid([STORY, SWITCHED, None, STORY]) == 0.5


def test_samples_are_read_up_to_end_of_text_and_unfinished_ones_count_as_invalid(monkeypatch):
    """What `valid_story_rate` makes of generated tokens: each row up to its first end-of-text;
    a row without one (not finished within block_size) is invalid."""
    tokenizer = get_tokenizer("byte")
    eot = tokenizer.eot_id
    rows = [list(STORY.encode()) + [eot], list(SWITCHED.encode()) + [eot], list(STORY.encode())[:60],
            [eot], list(STORY.encode()) + [eot, 65, 66]]
    width = max(map(len, rows))
    tokens = np.asarray([row + [eot] * (width - len(row)) if eot in row else row + [66] * (width - len(row))
                         for row in rows], np.int32)
    seen = {}

    def fake_generate(model, prompt, max_new_tokens, **kwargs):
        seen.update(prompt=prompt, max_new_tokens=max_new_tokens, **kwargs)
        return tokens

    monkeypatch.setattr(story_samples, "generate", fake_generate)
    model = LanguageModel(tiny_config("rwkv", vocab_size=257), rngs=nnx.Rngs(0))
    rate, texts = story_samples.valid_story_rate(model, tokenizer, num_samples=5)
    assert texts == [STORY, SWITCHED, None, "", STORY]
    assert rate == 2 / 5
    assert seen["prompt"].tolist() == [[eot]] * 5 and seen["max_new_tokens"] == model.config.block_size
    assert seen["temperature"] == 1.0 and seen["stop_token"] == eot


def test_a_random_model_samples_64_stories_the_grammar_rejects():
    model = LanguageModel(tiny_config("hybrid", vocab_size=257), rngs=nnx.Rngs(0))
    rate, texts = story_samples.valid_story_rate(model, get_tokenizer("byte"))
    assert len(texts) == 64 and rate == 0.0


def test_the_command_scores_a_checkpoint_and_refuses_a_missing_one(tmp_path, capsys):
    from microrwkv_jax.checkpoints import save_model_dir
    model = LanguageModel(tiny_config("rwkv", vocab_size=257), rngs=nnx.Rngs(0))
    save_model_dir(tmp_path / "model", model, {"model": model.config.to_dict(), "tokenizer": "byte"})
    assert story_samples.main([str(tmp_path / "model"), "--num_samples", "4", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == "valid stories: 0/4 (0%)" and len(out.splitlines()) >= 3
    assert story_samples.main([str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.startswith("story_samples: error: ")
