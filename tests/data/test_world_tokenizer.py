"""The RWKV World tokenizer against BlinkDL's own (the `rwkv` package's TRIE_TOKENIZER): the same
ids on hostile text and on bytes that are not UTF-8, exact round trips, a text stream prepared in
pieces equal to the whole text's tokens, and vocabulary files that are not one refused in one line."""

import pathlib
import random

import numpy as np
import pytest

from microrwkv_jax.data.tokenizers import WORLD_VOCAB, WorldTokenizer, get_tokenizer, world_vocab_path
from tests.data.test_text_stream import HOSTILE, prepared

rwkv_tokenizer = pytest.importorskip("rwkv.rwkv_tokenizer", reason="BlinkDL's rwkv package is the test extra")


@pytest.fixture(scope="module")
def world():
    return get_tokenizer("world")


@pytest.fixture(scope="module")
def reference():
    """BlinkDL's tokenizer on the vocabulary file its package ships (not the one we load)."""
    return rwkv_tokenizer.TRIE_TOKENIZER(str(pathlib.Path(rwkv_tokenizer.__file__).parent / WORLD_VOCAB))


def hostile_strings(count: int, seed: int = 0):
    rng = random.Random(seed)
    alphabet = ([chr(c) for c in list(range(0, 0x250)) + list(range(0x4E00, 0x4E80)) + list(range(0x3040, 0x30A0))
                 + [0x1F600, 0x1F680, 0x1F469, 0x200D, 0x2764, 0xFE0F, 0xFEFF, 0x0301, 0x05D0, 0x0627]]
                + ["\r\n", "  ", "    ", "<|endoftext|>", "hello", " the", "\n\n", "def ", "User:", "\t"])
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(count)]


def test_the_same_ids_as_blinkdls_tokenizer_on_hostile_text(world, reference):
    assert world.name == "world" and world.vocab_size == 65536 and world.eot_id == 0
    for text in hostile_strings(1500) + [HOSTILE.decode("utf-8"), "", " " * 300, "a" * 1000]:
        ids = world.encode(text)
        assert ids == reference.encode(text), repr(text)
        assert world.decode(ids) == text
    texts = hostile_strings(50, seed=1)
    tokens, lengths = world.encode_documents(texts)
    assert tokens.tolist() == [i for t in texts for i in reference.encode(t) + [0]]
    assert lengths.tolist() == [len(reference.encode(t)) + 1 for t in texts]


def test_bytes_that_are_not_utf8_are_tokenised_as_blinkdls_and_round_trip(world, reference):
    rng = random.Random(2)
    samples = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 60))) for _ in range(400)]
    samples += [HOSTILE, b"\xff\xfe\xe4\xb8", "日本語".encode()[:-1] + b" text"]
    for data in samples:
        ids = world.encode_stream(data).tolist()
        assert ids == reference.encodeBytes(data)
        assert world.decode_bytes(ids) == data
    # Ids ending inside a character (the single-byte tokens, id = byte + 1, of "日"'s first two
    # bytes): their bytes exactly, and text with a replacement character, never an exception.
    partial = world.encode("a") + [0xE6 + 1, 0x97 + 1]
    assert world.decode_bytes(partial) == b"a\xe6\x97" and world.decode(partial) == "a\ufffd"


def test_a_stream_prepared_in_pieces_has_the_whole_texts_tokens(world, reference, tmp_path):
    """World tokens span spaces and line ends, so pieces are cut where the tokenizer says
    (`stream_cut`): the tokens of every piece size equal those of the whole text."""
    text = (HOSTILE * 3 + "  ".join(hostile_strings(200, seed=3)).encode() + b"\xff\xfe tail " * 20) * 4
    path = tmp_path / "world.txt"
    path.write_bytes(text)
    held_cut = len(text) - len(text) // 5
    while text[held_cut] & 0xC0 == 0x80:      # the split moves forward to a character's start
        held_cut += 1
    for piece_chars in (1 << 22, 200, 777):
        data = prepared(path, tmp_path, world, name=f"w{piece_chars}", val_fraction=0.2, piece_chars=piece_chars,
                        workers=2)
        assert np.asarray(data.train).tolist() == reference.encodeBytes(text[:held_cut]), piece_chars
        assert np.asarray(data.val).tolist() == reference.encodeBytes(text[held_cut:])


def test_the_vocabulary_is_found_and_any_copy_of_it_is_the_same_tokenizer(world, monkeypatch, tmp_path):
    assert world_vocab_path().name == WORLD_VOCAB
    crlf = tmp_path / WORLD_VOCAB
    crlf.write_bytes(world_vocab_path().read_bytes().replace(b"\n", b"\r\n"))
    assert get_tokenizer(str(crlf)).name == "world"
    monkeypatch.setenv("MICRORWKV_WORLD_VOCAB", str(crlf))
    assert world_vocab_path() == crlf
    edited = tmp_path / "edited.txt"
    edited.write_text(world_vocab_path().read_text(encoding="utf-8").replace("'hello'", "'hellO'"), encoding="utf-8")
    assert get_tokenizer(str(edited)).name.startswith("world-")


@pytest.mark.parametrize("line", ["1 __import__('os').system('touch pwned') 1", "1 'ab' 3", "x 'a' 1",
                                  "70000 'a' 1", "1 'a' 1\n2 'a' 1"])
def test_a_file_that_is_not_a_world_vocabulary_is_one_line(tmp_path, line):
    path = tmp_path / "bad.txt"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^tokenizer .*bad.txt: line \d is not `id repr\(token\) length` of a new "
                                         r"token: not a World vocabulary$"):
        WorldTokenizer(path)
    assert not (tmp_path / "pwned").exists()
