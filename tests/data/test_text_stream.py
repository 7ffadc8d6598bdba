"""A user's .txt read as written: one stream of its bytes, held out by position or by a separate
file, in bounded memory, whatever its line ends, BOM, encoding errors or lack of newlines."""

import numpy as np
import pytest

from microrwkv_jax.data import pipeline, prepare, sources, stories
from microrwkv_jax.data.tokenizers import ByteTokenizer, get_tokenizer

# Everything a real file may hold: a BOM, CRLF and LF line ends, blank lines (with spaces in them
# too), a literal <|endoftext|>, multi-byte characters, tabs, and a byte that is not UTF-8.
HOSTILE = ("\ufeffCHAPTER 1\r\n\r\nHappy families are all alike;\r\n  \r\nevery unhappy family is unhappy "
           "in its own way.\n\n\n<|endoftext|> is text here.\tTabs, \u00e9t\u00e9, \u65e5\u672c\u8a9e, "
           "\U0001F600.\n").encode("utf-8")


def data_cfg(cache_dir, **overrides):
    return prepare._Fields({**prepare.DEFAULTS, "cache_dir": str(cache_dir), **overrides})


def prepared(path, tmp_path, tokenizer=None, name="cache", **overrides):
    tokenizer = tokenizer or ByteTokenizer()
    piece_chars = overrides.pop("piece_chars", sources.PIECE_CHARS)
    workers = overrides.pop("workers", 1)
    cache = prepare.prepare_cache(str(path), data_cfg(tmp_path / name, **overrides), tokenizer, workers=workers,
                                  piece_chars=piece_chars, progress=False)
    return pipeline.load_token_data(cache)


def test_a_txt_is_its_bytes_as_written_and_its_last_fraction_is_held_out(tmp_path):
    raw = HOSTILE * 37 + b"broken \xff\xfe byte" + HOSTILE     # invalid UTF-8: the byte tokenizer keeps it
    path = tmp_path / "mine.txt"
    path.write_bytes(raw)
    held = int(len(raw) * 0.1)
    results = []
    for workers, piece_chars in [(1, 1 << 22), (2, 7), (2, 64)]:     # pieces that cut CRLFs and characters
        data = prepared(path, tmp_path, name=f"c{workers}-{piece_chars}", val_fraction=0.1, workers=workers,
                        piece_chars=piece_chars)
        assert bytes(np.asarray(data.train, np.uint8)) == raw[:len(raw) - held]
        assert bytes(np.asarray(data.val, np.uint8)) == raw[len(raw) - held:]
        results.append((bytes(data.train), bytes(data.val)))
    assert results[0] == results[1] == results[2]
    info = data.info
    assert info["text_stream"] and info["train_documents"] == 1 and info["val_documents"] == 1
    assert info["train_tokens"] + info["val_tokens"] == len(raw) and info["val_bytes"] == held
    assert list(data.train_doc_starts) == [0] and list(data.val_doc_starts) == [0]
    assert 256 not in np.asarray(data.train) and 256 not in np.asarray(data.val)    # no end-of-text inserted


def test_the_split_moves_to_a_character_start_and_never_holds_out_more_than_the_fraction(tmp_path):
    path = tmp_path / "utf8.txt"
    path.write_bytes(("a" * 97 + "\u65e5" * 10).encode())       # 127 bytes; a 10% split falls inside a 3-byte character
    train, val = sources.stream_split([str(path)], 0.1)
    assert train == [(str(path), 0, 115)] and val == [(str(path), 115, 127)]    # 12 <= 12.7 bytes held out
    tok = get_tokenizer("byte")
    data = prepared(path, tmp_path, tok, val_fraction=0.1)
    assert bytes(np.asarray(data.val, np.uint8)).decode() == "\u65e5" * 4 and data.info["val_chars"] == 4


def test_several_files_are_one_stream_and_val_dataset_holds_out_a_file_whole(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"first file\r\n")
    (tmp_path / "b.txt").write_bytes(b"second file, no newline")
    (tmp_path / "held.txt").write_bytes(b"\r\nheld out\r\n\r\n")
    data = prepared(tmp_path / "[ab].txt", tmp_path, val_fraction=0.25)
    whole = b"first file\r\nsecond file, no newline"
    assert bytes(data.train.astype(np.uint8)) + bytes(data.val.astype(np.uint8)) == whole
    assert data.info["val_bytes"] == int(len(whole) * 0.25)
    data = prepared(tmp_path / "[ab].txt", tmp_path, name="v", val_dataset=str(tmp_path / "held.txt"))
    assert bytes(data.train.astype(np.uint8)) == whole
    assert bytes(data.val.astype(np.uint8)) == b"\r\nheld out\r\n\r\n"
    with pytest.raises(ValueError, match=r"^data.val_dataset: no files match '.*none\*'$"):
        prepared(tmp_path / "a.txt", tmp_path, name="x", val_dataset=str(tmp_path / "none*"))


def test_documents_only_by_explicit_choice(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("one\n\ntwo<|endoftext|>three\n\nfour\n\nfive\n\nsix\n\nseven\n\neight\n\nnine\n\nten")
    stream = prepared(path, tmp_path, name="s", val_fraction=0.1)
    assert stream.info["text_stream"] and stream.info["train_documents"] == 1
    eot = prepared(path, tmp_path, name="e", val_fraction=0.5, txt_split="eot")
    assert eot.info["train_documents"] == 1 and eot.info["val_documents"] == 1
    blank = prepared(path, tmp_path, name="b", val_fraction=0.2, txt_split="blank_lines")
    assert blank.info["train_documents"] == 8 and blank.info["val_documents"] == 1      # 9 documents
    assert ByteTokenizer().decode(np.asarray(blank.val)) == "six"


def test_bpe_tokens_of_a_stream_in_pieces_equal_the_whole_texts(tmp_path, gpt2_bpe, monkeypatch):
    monkeypatch.setenv("MICRORWKV_GPT2_BPE", str(gpt2_bpe))
    tok = get_tokenizer("gpt2")
    texts, _ = stories.generate_stories(40, 3)
    text = "\r\n\r\n".join(texts) + "  double  spaces,\ttabs\n\n\n 42 numbers\n!punct\nend<|endoftext|>more"
    path = tmp_path / "text.txt"
    path.write_text(text, newline="")
    held = int(len(text.encode()) * 0.2)
    whole = text.encode()
    for piece_chars in (1 << 22, 50, 333):
        data = prepared(path, tmp_path, tok, name=f"g{piece_chars}", val_fraction=0.2, piece_chars=piece_chars,
                        workers=2)
        assert list(np.asarray(data.train)) == tok.encode(whole[:len(whole) - held].decode())
        assert list(np.asarray(data.val)) == tok.encode(whole[len(whole) - held:].decode())
    # Lines with no space: the pieces are cut after line ends (a CRLF kept whole).
    lines = "".join(f"word{i}.\r\n{i}\nx\r\n\r\n" if i % 3 else f"Line{i};\n" for i in range(400))
    (tmp_path / "lines.txt").write_bytes(lines.encode())
    data = prepared(tmp_path / "lines.txt", tmp_path, tok, name="lines", val_dataset=str(path), piece_chars=20)
    assert list(np.asarray(data.train)) == tok.encode(lines)
    (tmp_path / "bad.txt").write_bytes(b"fine text " * 10 + b"\xff then more")
    with pytest.raises(ValueError, match=r"^dataset: .*bad.txt: not UTF-8 text \(byte 100\); the byte tokenizer "
                                         r"reads any bytes$"):
        prepared(tmp_path / "bad.txt", tmp_path, tok, name="bad")


def test_a_text_with_no_newline_or_space_streams_in_bounded_pieces(tmp_path):
    path = tmp_path / "one_line.txt"
    rng = np.random.default_rng(0)
    raw = rng.integers(ord("a"), ord("z") + 1, 300_000).astype(np.uint8).tobytes()
    path.write_bytes(raw)
    pieces = list(sources.stream_pieces([(str(path), 0, len(raw))], 1000))
    assert b"".join(p.data for p in pieces) == raw
    assert max(len(p.data) for p in pieces) <= sources.MAX_CARRY_PIECES * 1000
    assert [p.first for p in pieces[:2]] == [True, False]


def test_a_text_too_small_to_hold_any_out_is_one_line(tmp_path):
    # (too small for a training window: tests/training/test_text_run.py, the trainer's message)
    path = tmp_path / "tiny.txt"
    path.write_bytes(b"abc")
    with pytest.raises(ValueError, match=r"^dataset: '.*tiny.txt' gives 3 training and 0 held-out bytes "
                                         r"\(data.val_fraction=0.02\); need some of each: raise data.val_fraction, "
                                         r"use more text or give the held-out text as data.val_dataset$"):
        prepared(path, tmp_path)


def test_data_settings_no_source_can_use_are_one_line_errors():
    for overrides, dataset, message in [
            (dict(txt_split="paragraphs"), "my.txt", "data.txt_split='paragraphs': expected one of 'stream', 'eot', "
                                                     "'blank_lines'"),
            (dict(val_dataset="held.txt"), "stories", "data.val_dataset: only for a dataset of local files, not "
                                                      "'stories' (it has its own held-out part)"),
            (dict(val_dataset=""), "my.txt", "data.val_dataset='': a path or glob of held-out files, or None"),
            (dict(val_fraction=1.0), "my.txt", "data.val_fraction=1.0: must be between 0 and 1")]:
        with pytest.raises(ValueError) as error:
            prepare.check_source_config(data_cfg("unused", **overrides), dataset)
        assert str(error.value) == message
