"""Tests for prosg_jax.data.tokenizers and prosg_jax.data.world_tokenizer."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from prosg_jax.data import world_tokenizer as wt
from prosg_jax.data.tokenizers import (
    ByteTokenizer,
    Tokenizer,
    VocabFormatError,
    WorldTokenizer,
    get_tokenizer,
)

VOCAB = Path(wt.__file__).resolve().parent / "rwkv_vocab_v20230424.txt"

# Texts shared by the round-trip tests of both tokenizers.
VARIED_TEXTS = [
    "",
    "a",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.\n",
    "héllo wörld — naïve café façade",
    "中文分词测试：我们在北京的大学学习人工智能。",
    "日本語のテキストと한국어 텍스트",
    "emoji: 😀👍🏽🚀 family: 👨‍👩‍👧‍👦 flag: 🇯🇵 heart: ❤️",
    "NUL\x00byte and \x01\x02 controls \x7f",
    "def f(x):\n    return x ** 2  # square\n\n\tif (a != b) { return; }\n",
    "    \n\n\n\t\t  \r\n   trailing   ",
    " " * 100 + "\n" * 50 + "\t" * 7,
    "a" * 300,
    "€½∑∫→≤≥ мир Ελληνικά مرحبا שלום हिन्दी",
    "\ufeffBOM and \u2028 line sep \u00a0 nbsp \U0010ffff max",
]


def _latin1_random(rng: random.Random, n: int) -> str:
    """Random bytes read as latin-1: every code point 0-255, incl. controls."""
    return bytes(rng.randrange(256) for _ in range(n)).decode("latin-1")


# --------------------------------------------------------------------------- #
# ByteTokenizer
# --------------------------------------------------------------------------- #


def test_byte_scheme_is_fixed():
    tok = ByteTokenizer()
    assert (tok.pad_id, tok.eos_id, tok.vocab_size) == (0, 1, 258)
    assert (ByteTokenizer.PAD_ID, ByteTokenizer.EOS_ID, ByteTokenizer.BYTE_OFFSET) == (0, 1, 2)
    ids = tok.encode("A\x00\xff")  # "\xff" is U+00FF: two UTF-8 bytes.
    assert ids.dtype == np.int32
    assert ids.tolist() == [ord("A") + 2, 0 + 2, 0xC3 + 2, 0xBF + 2]


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text


def test_byte_never_emits_pad_or_eos():
    tok = ByteTokenizer()
    all_bytes = bytes(range(256))
    ids = tok.encode_bytes(all_bytes)
    assert ids.min() == 2 and ids.max() == 257
    assert tok.decode_bytes(ids) == all_bytes
    text = "".join(map(chr, range(256))) + _latin1_random(random.Random(0), 500)
    ids = tok.encode(text)
    assert tok.pad_id not in ids and tok.eos_id not in ids


def test_byte_decode_drops_pad_and_eos_anywhere():
    tok = ByteTokenizer()
    h, i = ord("h") + 2, ord("i") + 2
    assert tok.decode([0, h, 1, i, 0, 0, 1]) == "hi"
    assert tok.decode(np.array([1, 1, 0], dtype=np.int64)) == ""
    assert tok.decode([]) == ""


@pytest.mark.parametrize("bad", [-1, 258, 1000, 2**40])
def test_byte_out_of_range_ids_raise(bad):
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match=rf"token id {bad} at position 1 is outside \[0, 258\)"):
        tok.decode([ord("a") + 2, bad, ord("b") + 2])


def test_byte_rejects_non_integer_and_non_1d_ids():
    tok = ByteTokenizer()
    with pytest.raises(TypeError, match="integers"):
        tok.decode(np.array([70.0, 71.0]))
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.full((2, 2), 70))
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")  # type: ignore[arg-type]


def test_byte_invalid_utf8_is_strict_by_default():
    tok = ByteTokenizer()
    ids = tok.encode_bytes(b"ok\xff")
    with pytest.raises(UnicodeDecodeError):
        tok.decode(ids)
    assert tok.decode(ids, errors="replace") == "ok\ufffd"


# --------------------------------------------------------------------------- #
# WorldTokenizer
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module", params=["own", "fast"])
def world(request) -> WorldTokenizer:
    """This module's encoder, and ``pyrwkv_tokenizer``'s behind the same interface."""
    if request.param == "own":
        return WorldTokenizer(fast=False)
    pytest.importorskip("pyrwkv_tokenizer")
    return WorldTokenizer()


@pytest.fixture(scope="module")
def reference():
    mod = pytest.importorskip("rwkv.rwkv_tokenizer")
    return mod.TRIE_TOKENIZER(str(VOCAB))


def _tokens_crossing_pieces(world: WorldTokenizer, text: str, ids: np.ndarray) -> int:
    """How many tokens contain an interior boundary of the encoder's memo pieces."""
    pieces = wt._PIECE_RE.findall(text.encode("utf-8"))
    boundaries = set(np.cumsum([len(p) for p in pieces]).tolist())
    table = world._tables.id_to_bytes
    ends = np.cumsum([len(table[i]) for i in ids.tolist()]).tolist()
    starts = [0, *ends][: len(ends)]
    return sum(
        any(b in boundaries for b in range(s + 1, e)) for s, e in zip(starts, ends, strict=True)
    )


def _varied_strings(seed: int, count: int, world: WorldTokenizer) -> list[str]:
    """Random strings from several generators, for comparison with the reference."""
    rng = random.Random(seed)
    table = world._tables.id_to_bytes
    vocab_ids = [i for i in range(1, 65530) if table[i]]
    words = "the of and model state token gradient 的 一 是 中国 café über 😀 🚀 \t \n".split(" ")
    out = []
    for k in range(count):
        kind = k % 6
        if kind == 0:  # Concatenated vocabulary tokens: many boundary crossings.
            raw = b"".join(table[rng.choice(vocab_ids)] for _ in range(rng.randint(1, 30)))
            out.append(raw.decode("utf-8", errors="replace"))
        elif kind == 1:  # Random code points (surrogates excluded: not encodable).
            cps = [rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0xD7FF)]) for _ in range(40)]
            out.append("".join(map(chr, cps)))
        elif kind == 2:  # Words and separators.
            seps = [" ", "  ", "\n", ", ", ".\n\n", "\t", "", "\n    "]
            out.append("".join(rng.choice(words) + rng.choice(seps) for _ in range(30)))
        elif kind == 3:  # Whitespace runs with a little text.
            out.append("".join(rng.choice([" ", "\n", "\t", "\r", "x", "()"]) for _ in range(80)))
        elif kind == 4:  # Random bytes read as latin-1.
            out.append(_latin1_random(rng, rng.randint(0, 120)))
        else:  # Code-like text.
            name = rng.choice(["foo", "bar_baz", "x1", "self.w"])
            out.append(f"def {name}(a, b={rng.randint(0, 10**6)}):\n    return a @ b  # {name}\n")
    return out


def test_world_attributes(world):
    assert (world.vocab_size, world.pad_id, world.eos_id) == (65536, 0, 0)
    assert isinstance(world, Tokenizer)
    assert world.vocab_path == VOCAB


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_world_round_trip(world, text):
    ids = world.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert world.decode(ids) == text
    if text:
        assert ids.min() >= 1 and ids.max() < 65530  # Never pad / end-of-text.
    else:
        assert ids.size == 0


def test_world_round_trip_random(world):
    rng = random.Random(1)
    for _ in range(50):
        text = _latin1_random(rng, rng.randint(0, 400))
        assert world.decode(world.encode(text)) == text
    raw = bytes(rng.randrange(256) for _ in range(5000))  # Not valid UTF-8.
    ids = world.encode_bytes(raw)
    assert world.decode_bytes(ids) == raw
    assert 0 not in ids


def test_world_known_ids(world):
    # Pinned ids from the reference tokenizer for this vocabulary.
    single = {b: world._tables.bytes_to_id[bytes([b])] for b in range(256)}
    assert single[0] == 1 and single[255] == 256  # Line "1 '\x00' 1" ... "256 b'\xff' 1".
    ids = world.encode("Hello world")
    assert [world._tables.id_to_bytes[i] for i in ids] == [b"Hello", b" world"]


@pytest.mark.reference
def test_world_matches_reference(world, reference):
    texts = _varied_strings(seed=0, count=300, world=world) + VARIED_TEXTS
    crossing = 0
    for text in texts:
        ids = world.encode(text)
        assert ids.tolist() == reference.encode(text), repr(text)
        crossing += _tokens_crossing_pieces(world, text, ids)
    # The memo's fallback for tokens crossing piece boundaries must be exercised.
    assert crossing > 20
    # Second pass with a warm memo, then everything as one document (new contexts).
    for text in texts[:60]:
        assert world.encode(text).tolist() == reference.encode(text)
    joined = "".join(texts)
    assert world.encode(joined).tolist() == reference.encode(joined)


@pytest.mark.reference
def test_world_matches_reference_on_raw_bytes(world, reference):
    rng = random.Random(2)
    for _ in range(30):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
        assert world.encode_bytes(raw).tolist() == reference.encodeBytes(raw)


@pytest.mark.reference
def test_world_tiny_memo_is_bounded_and_exact(world, reference, monkeypatch):
    monkeypatch.setattr(wt, "_MEMO_MAX_ENTRIES", 8)
    fresh = WorldTokenizer(fast=False)
    text = "".join(_varied_strings(seed=3, count=60, world=world))
    assert fresh.encode(text).tolist() == reference.encode(text)
    assert len(fresh._memo) <= 8


def test_fast_encoder_equals_own_on_a_large_mixed_text():
    pytest.importorskip("pyrwkv_tokenizer")
    fast, own = WorldTokenizer(), WorldTokenizer(fast=False)
    assert fast._fast is not None and own._fast is None
    texts = _varied_strings(seed=5, count=600, world=own) + VARIED_TEXTS
    for text in texts:
        assert fast.encode(text).tolist() == own.encode(text).tolist(), repr(text)
    joined = "".join(texts) * 20  # about 1 MB: documents joined, new contexts
    np.testing.assert_array_equal(fast.encode(joined), own.encode(joined))


def test_fast_encoder_only_for_the_vendored_vocabulary(tmp_path):
    copy = tmp_path / "vocab.txt"
    copy.write_bytes(VOCAB.read_bytes())
    assert WorldTokenizer(copy)._fast is None
    assert (
        WorldTokenizer(copy).encode("fast path off").tolist()
        == WorldTokenizer(fast=False).encode("fast path off").tolist()
    )


def test_world_pickles_by_path(world):
    payload = pickle.dumps(world)
    assert len(payload) < 1000  # The path, not the tables.
    clone = pickle.loads(payload)
    assert clone.vocab_path == world.vocab_path and clone.fast == world.fast
    text = VARIED_TEXTS[7] + VARIED_TEXTS[9]
    assert clone.encode(text).tolist() == world.encode(text).tolist()


def test_world_decode_drops_pad_and_validates(world):
    ids = world.encode("abc").tolist()
    assert world.decode([0, *ids, 0, 0]) == "abc"
    for bad in (-1, 65530, 65535, 65536, 10**6):
        with pytest.raises(ValueError, match=f"token id {bad} at position 1"):
            world.decode([ids[0], bad])


def test_world_decode_strict_on_split_character(world):
    ids = world.encode_bytes("中".encode()[:2])
    with pytest.raises(UnicodeDecodeError):
        world.decode(ids)
    assert world.decode(ids, errors="replace") == "\ufffd"


def _write_vocab(path: Path, extra_lines: list[str]) -> Path:
    """A small valid vocabulary: all 256 single bytes plus ``extra_lines``."""
    lines = [f"{b + 1} {bytes([b])!r} 1" for b in range(256)]
    path.write_text("\n".join(lines + extra_lines) + "\n", encoding="utf-8")
    return path


def _small_vocab(tmp_path: Path) -> Path:
    return _write_vocab(
        tmp_path / "v.txt",
        ["300 'ab' 2", "301 'abcd' 4", "302 b'\\xe4\\xb8' 2", "303 '中文' 6"],
    )


def test_custom_vocab_greedy_longest_match(tmp_path):
    tok = WorldTokenizer(_small_vocab(tmp_path))
    table = tok._tables.id_to_bytes
    # "abc" is no token, so "abcx" must be "ab" + "c" + "x", not stop at "abcd".
    assert [table[i] for i in tok.encode("abcx")] == [b"ab", b"c", b"x"]
    assert tok.encode("abcdab").tolist() == [301, 300]
    assert tok.encode("中文中").tolist() == [303, 302, ord(b"\xad") + 1]
    assert tok.decode(tok.encode("xabcdy中文")) == "xabcdy中文"


@pytest.mark.reference
def test_custom_vocab_matches_reference(tmp_path):
    ref_mod = pytest.importorskip("rwkv.rwkv_tokenizer")
    path = _small_vocab(tmp_path)
    tok, ref = WorldTokenizer(path), ref_mod.TRIE_TOKENIZER(str(path))
    for text in ["abcx", "abcdab", "中文中", "aabcabcd abab", "中中文文"]:
        assert tok.encode(text).tolist() == ref.encode(text)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("300 'abc 3", "not a valid Python str/bytes literal"),
        ("300 'abc' 4", "token has 3 bytes but the line declares 4"),
        ("300 __import__('os').system('false') 1", "not a valid Python str/bytes literal"),
        ("300 ['a'] 1", "must be str or bytes"),
        ("x 'ab' 2", "must be integers"),
        ("300'ab'", "expected '<id> <literal> <byte length>'"),
        ("65536 'ab' 2", r"id must be in \[1, 65536\)"),
        ("5 'ab' 2", "duplicate id 5"),
        ("300 'a' 1", "already has id 98"),
        ("300 '' 0", "must not be empty"),
    ],
)
def test_malformed_vocab_names_the_line(tmp_path, line, message):
    path = _write_vocab(tmp_path / "bad.txt", ["299 'ok' 2", line])
    with pytest.raises(VocabFormatError, match=message) as info:
        WorldTokenizer(path)
    assert "bad.txt:258:" in str(info.value)  # 256 byte lines + "ok" + the bad one.


def test_vocab_missing_single_byte_is_rejected(tmp_path):
    lines = [f"{b + 1} {bytes([b])!r} 1" for b in range(256) if b != 0x41]
    path = tmp_path / "v.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(VocabFormatError, match="single byte"):
        WorldTokenizer(path)


def test_vendored_vocab_matches_rwkv_package():
    mod = pytest.importorskip("rwkv.rwkv_tokenizer")
    shipped = Path(mod.__file__).with_name("rwkv_vocab_v20230424.txt")
    # Every rwkv release the torch extra admits (>= 0.8.26) ships this file; a
    # missing one means the reference we compare against has changed.
    assert shipped.exists(), f"the rwkv package no longer ships {shipped.name}"
    assert shipped.read_bytes() == VOCAB.read_bytes()


# --------------------------------------------------------------------------- #
# get_tokenizer
# --------------------------------------------------------------------------- #


def test_get_tokenizer():
    byte = get_tokenizer("byte")
    assert isinstance(byte, ByteTokenizer) and isinstance(byte, Tokenizer)
    world = get_tokenizer("world")
    assert isinstance(world, WorldTokenizer) and world.vocab_size == 65536
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt2'; valid names: 'byte', 'world'"):
        get_tokenizer("gpt2")
