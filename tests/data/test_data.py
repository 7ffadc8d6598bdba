"""The story corpus (unambiguous grammar, exact entropy floor), tokenizers and the input pipeline."""

import json
import math

import ml_collections
import numpy as np
import pytest

from microrwkv_jax.data import pipeline, sources, stories
from microrwkv_jax.data.tokenizers import ByteTokenizer, get_tokenizer


def test_generated_stories_parse_back_to_their_choices():
    rng = np.random.default_rng(2024)
    for _ in range(300):
        text, choices, logp = stories.sample_story(rng)
        parses = stories.parse(text)
        assert len(parses) == 1, text
        assert parses[0][0] == choices
        assert math.isclose(parses[0][1], logp, rel_tol=1e-12)


def test_parser_rejects_text_outside_the_grammar():
    text, _, _ = stories.sample_story(np.random.default_rng(1))
    assert stories.parse(text + " Extra words.") == []
    assert stories.parse(text.replace(" named ", " nammed ", 1).replace(" called ", " caled ", 1)) == []
    with pytest.raises(ValueError, match="not a story of the grammar"):
        stories.story_log_prob("Hello world.")


def _derivations(node, env):
    """Every (text, log-probability, env) the grammar node can produce, enumerated exhaustively."""
    if isinstance(node, stories.Lit):
        yield stories._fill(node.text, env), 0.0, env
    elif isinstance(node, stories.Seq):
        def seq(parts, env):
            if not parts:
                yield "", 0.0, env
                return
            for head, lp1, env1 in _derivations(parts[0], env):
                for tail, lp2, env2 in seq(parts[1:], env1):
                    yield head + tail, lp1 + lp2, env2
        yield from seq(node.parts, env)
    else:
        for p, option in zip(node.probs, node.options):
            for text, lp, env2 in _derivations(option.node, {**env, **dict(option.binds)}):
                yield text, math.log(p) + lp, env2


def test_opening_sub_grammar_is_unambiguous_and_normalised_exhaustively():
    """All derivations of the opening sentence: distinct texts, each parsed back uniquely, total
    probability exactly one (so the floor's log-probabilities are a proper distribution)."""
    derivations = [(text, lp) for text, lp, _ in _derivations(stories.OPENING, {})]
    texts = [t for t, _ in derivations]
    assert len(set(texts)) == len(texts) > 1000
    assert math.isclose(sum(math.exp(lp) for _, lp in derivations), 1.0, rel_tol=1e-9)
    for text, lp in derivations[::37]:
        (parse,) = stories.parse(text, stories.OPENING)
        assert math.isclose(parse[1], lp, rel_tol=1e-12)
    texts, logps = stories.generate_stories(2000, 3)
    assert len(set(texts)) > 1900 and np.all(logps < 0)          # rich: almost no repeats


def test_entropy_floor_is_exact_and_far_below_ngram_models(tmp_path):
    cfg = ml_collections.ConfigDict(dict(num_train_stories=3000, num_val_stories=200, story_seed=7, val_fraction=0.02,
                                         text_field="text", tfds_data_dir=None, tfds_val_split="validation",
                                         cache_dir=str(tmp_path)))
    tok = ByteTokenizer()
    data = pipeline.prepare_data("stories", cfg, tok, progress=False)
    texts, logps = stories.generate_stories(200, 7 + 1_000_003)
    floor = data.info["entropy_floor"]
    n_bytes = sum(len(t.encode()) for t in texts)
    assert math.isclose(floor["nats_per_byte"], -logps.sum() / n_bytes, rel_tol=1e-12)
    assert math.isclose(floor["nats_per_token"], -logps.sum() / (n_bytes + 200), rel_tol=1e-12)
    inputs, targets, used, _ = pipeline.val_windows(data, 384, tok.eot_id)
    assert len(used) == 200 and int(np.sum(targets >= 0)) == n_bytes + 200
    scored_floor = pipeline.floor_for_documents(data.info, used, int(np.sum(targets >= 0)))
    assert math.isclose(scored_floor, floor["nats_per_token"], rel_tol=1e-12)
    ladder = pipeline.ngram_baselines(data.train, inputs, targets, tok.vocab_size)
    assert ladder["unigram"] > ladder["bigram"] > 10 * scored_floor


def test_val_windows_start_at_document_starts_and_pad_with_ignored_targets(tmp_path):
    cfg = ml_collections.ConfigDict(dict(num_train_stories=50, num_val_stories=30, story_seed=1, val_fraction=0.02,
                                         text_field="text", tfds_data_dir=None, tfds_val_split="validation",
                                         cache_dir=str(tmp_path)))
    data = pipeline.prepare_data("stories", cfg, ByteTokenizer(), progress=False)
    inputs, targets, used, window = pipeline.val_windows(data, 400, 256)
    assert np.all(inputs[:, 0] == 256)
    for row_in, row_t in zip(inputs, targets):
        n = int(np.sum(row_t >= 0))
        assert np.all(row_t[n:] == -1) and row_t[n - 1] == 256
        np.testing.assert_array_equal(row_in[1:n], row_t[: n - 1])
    assert np.all(np.diff(window) >= 0)


def test_train_batches_are_a_pure_function_of_seed_and_step():
    tokens = np.arange(10_000, dtype=np.uint16)
    a = pipeline.train_batch(tokens, 3, 17, 8, 32)
    b = pipeline.train_batch(tokens, 3, 17, 8, 32)
    c = pipeline.train_batch(tokens, 3, 18, 8, 32)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (8, 33) and a.dtype == np.int32 and not np.array_equal(a, c)
    np.testing.assert_array_equal(np.diff(a, axis=1), 1)     # contiguous windows


def test_document_windows_start_at_an_end_of_text_and_stay_a_pure_function_of_seed_and_step():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 256, size=n) for n in rng.integers(5, 60, size=300)]
    tokens = np.concatenate([np.append(d, 256) for d in docs]).astype(np.uint16)     # each ends with end-of-text
    doc_starts = np.cumsum([0] + [d.size + 1 for d in docs[:-1]]).astype(np.int64)
    starts = pipeline.DocumentWindowStarts(doc_starts, tokens.size, 32)
    np.testing.assert_array_equal(starts[np.arange(starts.size)], np.flatnonzero(tokens[:tokens.size - 32] == 256))
    a = pipeline.train_batch(tokens, 3, 17, 64, 32, starts=starts)
    np.testing.assert_array_equal(a, pipeline.train_batch(tokens, 3, 17, 64, 32, starts=starts))
    assert a.shape == (64, 33) and np.all(a[:, 0] == 256)
    assert {tuple(row) for row in a} <= {tuple(tokens[o:o + 33]) for o in starts[np.arange(starts.size)]}
    assert np.array_equal(pipeline.train_batch(tokens, 3, 17, 64, 32, rows=slice(8, 16), starts=starts), a[8:16])
    with pytest.raises(ValueError, match="no document boundary leaves room for a window of block_size=32"):
        pipeline.DocumentWindowStarts(doc_starts[doc_starts < 20], 20, 32)


def test_cache_is_reused_and_local_files_are_read_as_documents(tmp_path):
    (tmp_path / "a.txt").write_text("First story.\n\nSecond story.\n\n\nThird one.")
    (tmp_path / "b.txt").write_text("Doc one<|endoftext|>Doc two\n\n still two<|endoftext|>")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "Json doc"}) + "\n\n" + json.dumps({"text": "Last"}) + "\n")
    docs = sources.read_local_documents(str(tmp_path / "*"), "text", "blank_lines")
    assert docs == ["First story.", "Second story.", "Third one.", "Doc one<|endoftext|>Doc two",
                    "still two<|endoftext|>", "Json doc", "Last"]
    assert sources.read_local_documents(str(tmp_path / "b.txt"), "text", "eot") == ["Doc one", "Doc two\n\n still two"]
    cfg = ml_collections.ConfigDict(dict(val_fraction=0.3, text_field="text", cache_dir=str(tmp_path / "cache"),
                                         tfds_data_dir=None, tfds_val_split="validation", txt_split="blank_lines",
                                         val_dataset=None))
    tok = ByteTokenizer()
    first = pipeline.prepare_data(str(tmp_path / "*.*"), cfg, tok, progress=False)
    second = pipeline.prepare_data(str(tmp_path / "*.*"), cfg, tok, progress=False)
    assert first.info["cache"] == second.info["cache"]
    # Held out at val_fraction 0.3: the last of every 1 / 0.3 documents, 2 of 7 (never more than 30%).
    assert [i for i in range(7) if sources.is_held_out(i, 0.3)] == [3, 6]
    assert tok.decode(np.asarray(first.train)) == "First story.Second story.Third one.still two<|endoftext|>Json doc"
    assert tok.decode(np.asarray(first.val)) == "Doc one<|endoftext|>Doc twoLast"
    assert first.info["val_documents"] == 2 and "entropy_floor" not in first.info
    assert first.info["val_bytes"] == len("Doc one<|endoftext|>Doc twoLast") and not first.info["text_stream"]
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1 is not a JSON object with a 'text' field$"):
        sources.read_local_documents(str(tmp_path / "bad.jsonl"), "text")


def test_gpt2_tokenizer_offline(gpt2_bpe, monkeypatch):
    monkeypatch.setenv("MICRORWKV_GPT2_BPE", str(gpt2_bpe))
    tok = get_tokenizer("gpt2")
    ids = tok.encode("Once upon a time, there was a little girl.")
    assert ids[:4] == [7454, 2402, 257, 640] and tok.decode(ids) == "Once upon a time, there was a little girl."
    assert tok.eot_id == 50256 and tok.vocab_size == 50257


def test_gpt2_through_tiktoken_cache_dir(gpt2_bpe, tmp_path, monkeypatch):
    import shutil
    shutil.copy(gpt2_bpe, tmp_path / "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("MICRORWKV_GPT2_BPE", raising=False)
    assert get_tokenizer("gpt2").encode("Hello world") == [15496, 995]


def test_unknown_tokenizer():
    with pytest.raises(ValueError, match=r"^tokenizer: unknown tokenizer 'bpe'; expected one of \('byte', 'gpt2', "
                                         r"'world'\), a tokenizer.json or a World vocabulary .txt path$"):
        get_tokenizer("bpe")


def tfds_fixture(tmp_path, val_split="validation"):
    pytest.importorskip("importlib_resources", reason="building a TFDS dataset needs the test extra")
    from tests.tfds_fixture.tiny_stories_text.tiny_stories_text_dataset_builder import Builder
    builder = Builder(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare()
    cfg = ml_collections.ConfigDict(dict(val_fraction=0.1, text_field="text", cache_dir=str(tmp_path / "cache"),
                                         tfds_data_dir=str(tmp_path / "tfds"), tfds_val_split=val_split))
    return builder, cfg


def test_tfds_without_the_validation_split_holds_out_part_of_train(tmp_path, monkeypatch):
    builder, cfg = tfds_fixture(tmp_path, val_split="dev")
    monkeypatch.setattr(sources, "TFDS_RECORDS", 7)          # batched reads that do not divide the split
    data = pipeline.prepare_data(f"tfds:{builder.name}", cfg, ByteTokenizer(), progress=False)
    assert data.info["train_documents"] == 36 and data.info["val_documents"] == 4
    import tensorflow_datasets as tfds
    texts = [r["text"].decode() for r in tfds.data_source(builder.name, split="train", data_dir=cfg.tfds_data_dir)]
    expected = [t for i, t in enumerate(texts) if sources.is_held_out(i, 0.1)]
    assert len(expected) == 4
    assert ByteTokenizer().decode(np.asarray(data.val)) == "".join(expected)


def test_tfds_validation_split_that_fails_to_read_is_an_error_not_a_missing_split(tmp_path):
    builder, cfg = tfds_fixture(tmp_path)
    (shard,) = (tmp_path / "tfds").rglob("*validation.array_record*")
    shard.write_bytes(shard.read_bytes()[:40])          # corrupt: the split exists but cannot be read
    with pytest.raises(RuntimeError, match="ArrayRecord"):     # array_record's own error, not a silent hold-out
        pipeline.prepare_data(f"tfds:{builder.name}", cfg, ByteTokenizer(), progress=False)
    assert not list(tmp_path.rglob("info.json"))


def test_tfds_array_record_source_without_tensorflow(tmp_path):
    import sys
    builder, cfg = tfds_fixture(tmp_path)
    data = pipeline.prepare_data(f"tfds:{builder.name}", cfg, ByteTokenizer(), progress=False)
    assert data.info["train_documents"] == 40 and data.info["val_documents"] == 6
    texts, _ = stories.generate_stories(40, 0)
    assert data.info["train_tokens"] == sum(len(t.encode()) + 1 for t in texts)
    assert "tensorflow" not in sys.modules


def test_a_tokenizer_json_by_path(tmp_path):
    from microrwkv_jax.data.tokenizers import get_tokenizer, tokenizer_vocab_size
    from tests.helpers import make_tokenizer_json
    path = make_tokenizer_json(tmp_path / "tokenizer.json")
    tok = get_tokenizer(str(path))
    text = "Once upon a time, there was a small bunny named Lily."
    ids = tok.encode(text)
    assert len(ids) < len(text) and tok.decode(ids) == text
    assert tok.vocab_size == tokenizer_vocab_size(str(path)) == 320 and tok.eot_id == 0
    assert tok.decode(ids + [tok.eot_id]) == text
    assert tok.name.startswith("json-") and tok.name == get_tokenizer(str(path)).name
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"^tokenizer .*broken.json: not a readable tokenizer.json"):
        get_tokenizer(str(tmp_path / "broken.json"))
