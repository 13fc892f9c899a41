"""The RWKV "world" tokenizer (vocabulary ``rwkv_vocab_v20230424``, 65,536 ids).

It produces exactly the ids of the reference ``rwkv.rwkv_tokenizer.TRIE_TOKENIZER``
(greedy longest match over UTF-8 bytes) and is about twice as fast on mixed
text (memoised pieces, see :meth:`WorldTokenizer.encode_bytes` and
``benchmarks/tokenizer_bench.py``); with the optional ``pyrwkv_tokenizer``
installed, text is encoded by that compiled encoder instead, with the same ids.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from prosg_jax.data.token_ids import IdsLike, as_checked_ids, check_text

_WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"
_DEFAULT_WORLD_VOCAB = Path(__file__).resolve().parent / _WORLD_VOCAB_FILE
_WORLD_VOCAB_SIZE = 65536

# Splits bytes into pieces that usually coincide with token boundaries of the
# world vocabulary: words with an optional leading space (non-ASCII bytes count
# as letters, so "café" and runs of CJK stay whole), numbers, punctuation runs
# and whitespace runs (kept whole because the vocabulary has tokens such as
# "\n    " that end right before an indented word). The split only decides
# what gets memoised: the encoder checks exactly whether a token may cross a
# piece boundary, so any split yields the same ids. The last alternative
# matches any byte, so the pieces always concatenate to the input.
_PIECE_RE = re.compile(
    rb" ?[A-Za-z\x80-\xff]+"
    rb"| ?[0-9]+"
    rb"| ?[^\sA-Za-z0-9\x80-\xff]+"
    rb"|\s+"
    rb"|[\x00-\xff]"
)
# Pieces longer than this skip the memo: they are rarely repeated and would
# make the cache hold large keys.
_MEMO_MAX_PIECE = 48
# The memo is cleared when it reaches this many entries, bounding its memory
# (keys are at most _MEMO_MAX_PIECE + 1 bytes) on arbitrarily large corpora.
_MEMO_MAX_ENTRIES = 1 << 16


class VocabFormatError(ValueError):
    """A vocabulary file line is malformed; the message names file and line."""


class _WorldTables(NamedTuple):
    """Read-only lookup tables derived from one vocabulary file.

    Attributes:
        id_to_bytes: ``id -> token bytes``; ``b""`` for id 0 (end of text) and
            for unused ids.
        known: Boolean mask over ids: True for id 0 and every vocabulary id.
        bytes_to_id: ``token bytes -> id``.
        single: ``byte -> id`` of each one-byte token (all 256 exist).
        pair: ``b0 * 256 + b1 -> id`` of two-byte tokens, -1 where absent.
        long_lens: 3-byte prefix -> lengths (>= 3, descending) of the tokens
            starting with it, so the encoder only probes lengths that exist.
        prefixes: Every prefix of length >= 2 of every token (tokens included);
            used to decide whether a token may cross a piece boundary.
    """

    id_to_bytes: list[bytes]
    known: np.ndarray
    bytes_to_id: dict[bytes, int]
    single: list[int]
    pair: list[int]
    long_lens: dict[bytes, tuple[int, ...]]
    prefixes: frozenset[bytes]


def _parse_vocab_line(line: str, lineno: int, where: str) -> tuple[int, bytes]:
    """``(id, token bytes)`` of one ``<id> <str/bytes literal> <byte length>`` line.

    Raises:
        VocabFormatError: naming ``where`` and ``lineno``, if the line does not
            follow the format.
    """

    def fail(reason: str) -> VocabFormatError:
        return VocabFormatError(f"{where}:{lineno}: {reason}: {line[:80]!r}")

    first, last = line.find(" "), line.rfind(" ")
    if first < 0 or last <= first:
        raise fail("expected '<id> <literal> <byte length>'")
    try:
        idx = int(line[:first])
        length = int(line[last + 1 :])
    except ValueError:
        raise fail("id and byte length must be integers") from None
    try:
        # literal_eval, never eval: the file is data and must not run code.
        value = ast.literal_eval(line[first + 1 : last].strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise fail("token is not a valid Python str/bytes literal") from None
    if isinstance(value, str):
        try:
            value = value.encode("utf-8")
        except UnicodeEncodeError:
            raise fail("token string is not encodable as UTF-8") from None
    elif not isinstance(value, bytes):
        raise fail(f"token literal must be str or bytes, got {type(value).__name__}")
    if len(value) != length:
        raise fail(f"token has {len(value)} bytes but the line declares {length}")
    if not 0 < idx < _WORLD_VOCAB_SIZE:
        raise fail(f"id must be in [1, {_WORLD_VOCAB_SIZE})")
    if not value:
        raise fail("token must not be empty")
    return idx, value


@functools.lru_cache(maxsize=4)
def _load_world_tables(path: str, mtime_ns: int, size: int) -> _WorldTables:
    """Parses a vocabulary file and builds the encoder tables.

    Cached because parsing 65k literals takes a noticeable fraction of a
    second and every data-pipeline worker may build a tokenizer; ``mtime_ns``
    and ``size`` are part of the key only so an edited file is re-read.

    Raises:
        VocabFormatError: On a malformed line, a duplicate id or token, or a
            vocabulary that misses a single-byte token (it could not encode
            arbitrary text).
    """
    del mtime_ns, size  # Only part of the cache key.
    where = os.path.basename(path)
    id_to_bytes = [b""] * _WORLD_VOCAB_SIZE
    known = np.zeros(_WORLD_VOCAB_SIZE, dtype=bool)
    known[0] = True
    bytes_to_id: dict[bytes, int] = {}
    # newline="\n": tokens are escaped literals, so only "\n" ends a line; a
    # stray "\r" stays inside the line and makes it fail loudly.
    with open(path, encoding="utf-8", newline="\n") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            idx, tok = _parse_vocab_line(line, lineno, where)
            if known[idx]:
                raise VocabFormatError(f"{where}:{lineno}: duplicate id {idx}")
            if tok in bytes_to_id:
                raise VocabFormatError(
                    f"{where}:{lineno}: token {tok!r} already has id {bytes_to_id[tok]}"
                )
            known[idx] = True
            id_to_bytes[idx] = tok
            bytes_to_id[tok] = idx

    try:
        single = [bytes_to_id[bytes([b])] for b in range(256)]
    except KeyError as e:
        raise VocabFormatError(f"{where}: no token for the single byte {e.args[0]!r}") from None
    pair = [-1] * 65536
    lens: dict[bytes, set[int]] = {}
    prefixes: set[bytes] = set()
    for tok, idx in bytes_to_id.items():
        n = len(tok)
        if n == 2:
            pair[tok[0] * 256 + tok[1]] = idx
        elif n >= 3:
            lens.setdefault(tok[:3], set()).add(n)
        prefixes.update(tok[:k] for k in range(2, n + 1))
    long_lens = {p: tuple(sorted(s, reverse=True)) for p, s in lens.items()}
    known.setflags(write=False)
    return _WorldTables(
        id_to_bytes, known, bytes_to_id, single, pair, long_lens, frozenset(prefixes)
    )


def _fast_world_encoder(path: Path):
    """``pyrwkv_tokenizer``'s encoder over the vendored vocabulary, or ``None``.

    It is optional (``pip install prosg_jax[fast]``) and used only for the
    vendored vocabulary, on which its ids are tested to equal ours; any other
    vocabulary file goes through this module's own encoder.
    """
    if path != _DEFAULT_WORLD_VOCAB.resolve():
        return None
    try:
        from pyrwkv_tokenizer import RWKVTokenizer
    except ImportError:
        return None
    return RWKVTokenizer(vocab_filepath=str(path))


class WorldTokenizer:
    """The RWKV "world" tokenizer (``rwkv_vocab_v20230424``).

    Encoding is greedy longest match over the UTF-8 bytes: at each position
    the longest vocabulary token that is a prefix of the remaining bytes is
    emitted. This is exactly what ``rwkv.rwkv_tokenizer.TRIE_TOKENIZER`` does,
    and the ids are identical. Every single byte is a token, so any text (and
    any byte string) can be encoded and ``decode(encode(s)) == s``.

    With the optional ``pyrwkv_tokenizer`` installed (``pip install
    prosg_jax[fast]``), :meth:`encode` of the vendored vocabulary runs its
    compiled encoder, with the same ids, about 8 times faster.

    Id 0 is end-of-text and padding (``pad_id == eos_id == 0``); it has no
    bytes, is never produced by ``encode`` and is dropped by ``decode``. Ids
    that the file does not define (65530-65535 for the default vocabulary)
    are rejected by ``decode``.

    Args:
        vocab_path: Vocabulary file, one ``<id> <python str/bytes literal>
            <byte length>`` per line. Defaults to the copy vendored with this
            package.
        fast: whether :meth:`encode` may use ``pyrwkv_tokenizer`` (when it is
            installed and the vocabulary is the vendored one).

    Raises:
        VocabFormatError: If the file is malformed (the message names the line).
        FileNotFoundError: If ``vocab_path`` does not exist.
    """

    vocab_size: int = _WORLD_VOCAB_SIZE
    pad_id: int = 0
    eos_id: int = 0

    def __init__(
        self, vocab_path: str | os.PathLike[str] | None = None, *, fast: bool = True
    ) -> None:
        path = Path(vocab_path).expanduser() if vocab_path is not None else _DEFAULT_WORLD_VOCAB
        path = path.resolve()
        st = path.stat()
        self.vocab_path = path
        t = _load_world_tables(str(path), st.st_mtime_ns, st.st_size)
        self._tables = t
        # Bound to attributes: the hot loops read them as locals.
        self._get = t.bytes_to_id.get
        self._lens = t.long_lens.get
        # Piece (+ next byte) -> ids, or None when a token may cross the piece
        # end; per instance so a tokenizer owns (and bounds) its own cache.
        self._memo: dict[bytes, tuple[int, ...] | None] = {}
        self.fast = fast
        self._fast = _fast_world_encoder(path) if fast else None

    # -- encoding --------------------------------------------------------- #

    def _greedy(self, data: bytes, i: int, stop: int, out: list[int]) -> int:
        """Appends greedy longest-match tokens starting at ``i`` until ``i >= stop``.

        Args:
            data: The bytes being encoded.
            i: Start position (a token boundary).
            stop: Stop once a token ends at or beyond this position.
            out: Receives the ids.

        Returns:
            The position after the last emitted token (may exceed ``stop``).
        """
        get, lens_of = self._get, self._lens
        single, pair = self._tables.single, self._tables.pair
        append = out.append
        n = len(data)
        while i < stop:
            # Tokens of >= 3 bytes: probe only lengths that exist for this
            # 3-byte prefix, longest first. Near the end the slice is shorter
            # than L; if it matches it is still the longest possible token, so
            # advance by the slice length, not by L.
            for length in lens_of(data[i : i + 3], ()):
                s = data[i : i + length]
                tid = get(s)
                if tid is not None:
                    append(tid)
                    i += len(s)
                    break
            else:
                if i + 1 < n:
                    tid = pair[data[i] * 256 + data[i + 1]]
                    if tid >= 0:
                        append(tid)
                        i += 2
                        continue
                append(single[data[i]])
                i += 1
        return i

    def _encode_piece(self, key: bytes) -> tuple[int, ...] | None:
        """Encodes ``key[:-1]`` alone if that provably matches in-context encoding.

        ``key`` is a piece plus the byte that follows it in the input. Inside
        the input, a token starting at offset ``k`` of the piece can only end
        past the piece if ``piece[k:] + next_byte`` is a prefix of some token.
        If that holds at no offset the greedy walk visits, the walk inside the
        input is identical to the walk over the piece alone and ends exactly
        at the piece end, so the ids can be reused wherever ``key`` occurs.

        Returns:
            The piece's ids, or None if a token may cross the piece end.
        """
        piece = key[:-1]
        out: list[int] = []
        self._greedy(piece, 0, len(piece), out)
        # Re-walk the token starts the greedy pass visited.
        prefixes, id_to_bytes = self._tables.prefixes, self._tables.id_to_bytes
        k = 0
        for tid in out:
            if key[k:] in prefixes:
                return None
            k += len(id_to_bytes[tid])
        return tuple(out)

    def encode_bytes(self, data: bytes) -> np.ndarray:
        """Encodes raw bytes by greedy longest match.

        Speed: the input is cut into pieces with a regex (C speed) and the
        ids of each piece are memoised per (piece, next byte), so common words
        cost one dict lookup. Pieces where a token could cross the piece end
        fall back to the direct greedy walk, keeping the output exact.

        Args:
            data: Bytes to encode (need not be valid UTF-8).

        Returns:
            A 1-D ``int32`` array of vocabulary ids (never ``pad_id``).
        """
        data = bytes(data)
        n = len(data)
        pieces = _PIECE_RE.findall(data)
        if not pieces:
            return np.zeros((0,), dtype=np.int32)
        # The last piece has no next byte to complete a memo key; it is walked
        # directly after the loop.
        last = pieces.pop()
        out: list[int] = []
        extend, greedy, encode_piece = out.extend, self._greedy, self._encode_piece
        memo = self._memo
        start = 0  # Start of the current piece; always a token boundary in the loop.
        pos = 0  # End of the last token emitted by a direct greedy walk.
        it = iter(pieces)
        for piece in it:
            end = start + len(piece)
            key = data[start : end + 1]
            try:
                ids = memo[key]
            except KeyError:
                ids = None
                if len(piece) <= _MEMO_MAX_PIECE:
                    ids = encode_piece(key)
                    if len(memo) >= _MEMO_MAX_ENTRIES:
                        memo.clear()
                    memo[key] = ids
            if ids is not None:  # Hot path: a memoised, context-free piece.
                extend(ids)
                start = end
                continue
            # A token may cross the piece end (or the piece is too long to
            # memoise): walk greedily, then skip the pieces the walk covered
            # until a piece end coincides with a token end again.
            pos = greedy(data, start, end, out)
            start = end
            while start < pos:
                piece = next(it, None)
                if piece is None:
                    break
                end = start + len(piece)
                if pos < end:
                    pos = greedy(data, pos, end, out)
                start = end
        if start + len(last) != n:  # The regex must cover every byte; guard it.
            raise AssertionError("internal error: pieces do not cover the input")
        pos = max(pos, start)
        if pos < n:
            greedy(data, pos, n, out)
        return np.asarray(out, dtype=np.int32)

    def encode(self, text: str) -> np.ndarray:
        """Encodes text (as UTF-8) to ids; see :meth:`encode_bytes`.

        Args:
            text: Any string without lone surrogates.

        Returns:
            A 1-D ``int32`` array of ids; never contains ``pad_id``.

        Raises:
            TypeError: If ``text`` is not a ``str``.
            UnicodeEncodeError: If ``text`` contains lone surrogates.
        """
        check_text(text)
        if self._fast is not None:
            # Same ids (tests/test_tokenizers.py), from compiled code.
            return np.asarray(self._fast.encode(text), dtype=np.int32)
        return self.encode_bytes(text.encode("utf-8"))

    # -- decoding --------------------------------------------------------- #

    def decode_bytes(self, ids: IdsLike) -> bytes:
        """Concatenates the bytes of ``ids``; id 0 contributes nothing.

        Args:
            ids: 1-D ids.

        Returns:
            The concatenated token bytes.

        Raises:
            ValueError: If an id is out of range or unused (the message names it).
            TypeError: If the ids are not integers.
        """
        arr = as_checked_ids(ids, self.vocab_size)
        unknown = ~self._tables.known[arr]
        if unknown.any():
            pos = int(np.flatnonzero(unknown)[0])
            raise ValueError(f"token id {int(arr[pos])} at position {pos} is not in the vocabulary")
        table = self._tables.id_to_bytes
        return b"".join([table[i] for i in arr.tolist()])

    def decode(self, ids: IdsLike, *, errors: str = "strict") -> str:
        """Decodes ids to text; id 0 (padding / end of text) is dropped.

        Args:
            ids: 1-D ids.
            errors: UTF-8 error handling as in :meth:`bytes.decode`. The default
                ``"strict"`` raises when the ids split a multi-byte character
                (e.g. a truncated sample); pass ``"replace"`` to render it.

        Returns:
            The decoded string.

        Raises:
            ValueError: If an id is out of range or unused.
            UnicodeDecodeError: If the bytes are not valid UTF-8 and
                ``errors="strict"``.
        """
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def __reduce__(self):
        # Data-pipeline workers receive tokenizers by pickle: send the path,
        # not megabytes of tables (the worker rebuilds them once, cached).
        return (_rebuild_world, (str(self.vocab_path), self.fast))

    def __repr__(self) -> str:
        return f"WorldTokenizer(vocab_path={str(self.vocab_path)!r})"


def _rebuild_world(vocab_path: str, fast: bool) -> WorldTokenizer:
    return WorldTokenizer(vocab_path, fast=fast)
