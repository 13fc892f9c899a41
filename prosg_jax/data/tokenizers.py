"""Tokenizers: a fixed byte-level scheme and the RWKV "world" vocabulary.

Two tokenizers share the small :class:`Tokenizer` protocol:

* :class:`ByteTokenizer` - the default for synthetic tasks. Its id scheme is
  fixed because other code (padding masks, synthetic task generators) relies on
  it: ``PAD_ID = 0``, ``EOS_ID = 1`` and byte ``b`` maps to ``b + 2``, so the
  vocabulary has 258 entries and id 0 never carries content.
* :class:`WorldTokenizer` - the RWKV "world" tokenizer (vocabulary
  ``rwkv_vocab_v20230424``, 65,536 ids). It produces exactly the ids of the
  reference ``rwkv.rwkv_tokenizer.TRIE_TOKENIZER`` (greedy longest match over
  UTF-8 bytes) and is about twice as fast on mixed text (memoised pieces, see
  :meth:`WorldTokenizer.encode_bytes` and ``benchmarks/tokenizer_bench.py``);
  with the optional ``pyrwkv_tokenizer`` installed, text is encoded by that
  compiled encoder instead, with the same ids.

Use :func:`get_tokenizer` to build one by name.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from prosg_jax.data.token_ids import IdsLike, Tokenizer, as_checked_ids, check_text
from prosg_jax.data.world_tokenizer import VocabFormatError, WorldTokenizer

__all__ = [
    "ByteTokenizer",
    "Tokenizer",
    "VocabFormatError",
    "WorldTokenizer",
    "get_tokenizer",
]


class ByteTokenizer:
    """UTF-8 byte tokenizer with a fixed, reserved-id scheme.

    Ids: ``PAD_ID = 0``, ``EOS_ID = 1``, byte ``b`` -> ``b + BYTE_OFFSET``
    (``BYTE_OFFSET = 2``), ``vocab_size = 258``. Shifting the bytes keeps id 0
    free so that a zero-filled batch is pure padding even when the text
    contains NUL bytes.

    ``encode`` never emits ``PAD_ID`` or ``EOS_ID`` (callers append EOS
    themselves); ``decode`` silently drops both, anywhere in the sequence, so
    padded or EOS-terminated model outputs decode without pre-trimming.
    """

    PAD_ID: Final[int] = 0
    EOS_ID: Final[int] = 1
    BYTE_OFFSET: Final[int] = 2
    VOCAB_SIZE: Final[int] = 256 + 2

    # Protocol attributes (instances share the class values).
    pad_id: int = PAD_ID
    eos_id: int = EOS_ID
    vocab_size: int = VOCAB_SIZE

    def encode(self, text: str) -> np.ndarray:
        """Encodes text as its UTF-8 bytes shifted by ``BYTE_OFFSET``.

        Args:
            text: Any string without lone surrogates.

        Returns:
            A 1-D ``int32`` array with values in ``[2, 258)``.

        Raises:
            TypeError: If ``text`` is not a ``str``.
            UnicodeEncodeError: If ``text`` contains lone surrogates.
        """
        check_text(text)
        return self.encode_bytes(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> np.ndarray:
        """Encodes raw bytes (no UTF-8 requirement).

        Args:
            data: Bytes to encode.

        Returns:
            A 1-D ``int32`` array with values in ``[2, 258)``.
        """
        return np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int32) + self.BYTE_OFFSET

    def decode_bytes(self, ids: IdsLike) -> bytes:
        """Maps ids back to bytes, dropping ``PAD_ID`` and ``EOS_ID``.

        Args:
            ids: 1-D ids in ``[0, 258)``.

        Returns:
            The concatenated bytes.

        Raises:
            ValueError: If an id is outside ``[0, vocab_size)`` (the message names it).
            TypeError: If the ids are not integers.
        """
        arr = as_checked_ids(ids, self.VOCAB_SIZE)
        content = arr[arr >= self.BYTE_OFFSET] - self.BYTE_OFFSET
        return content.astype(np.uint8).tobytes()

    def decode(self, ids: IdsLike, *, errors: str = "strict") -> str:
        """Decodes ids to text, dropping ``PAD_ID`` and ``EOS_ID``.

        Args:
            ids: 1-D ids in ``[0, 258)``.
            errors: UTF-8 error handling as in :meth:`bytes.decode`. The default
                ``"strict"`` raises on invalid UTF-8 instead of silently
                inserting replacement characters; pass ``"replace"`` to render
                e.g. truncated model samples.

        Returns:
            The decoded string.

        Raises:
            ValueError: If an id is out of range.
            UnicodeDecodeError: If the bytes are not valid UTF-8 and
                ``errors="strict"``.
        """
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def __repr__(self) -> str:
        return "ByteTokenizer()"


_TOKENIZERS = {"byte": ByteTokenizer, "world": WorldTokenizer}
TOKENIZER_NAMES = tuple(_TOKENIZERS)


def tokenizer_vocab_size(name: str) -> int:
    """The number of ids of the tokenizer ``name``, without building it (the world
    tokenizer takes seconds to build)."""
    return _TOKENIZERS[name].vocab_size


def get_tokenizer(name: str) -> Tokenizer:
    """Builds a tokenizer by name.

    Args:
        name: ``"byte"`` (:class:`ByteTokenizer`) or ``"world"``
            (:class:`WorldTokenizer` with the vendored vocabulary).

    Returns:
        A new tokenizer instance.

    Raises:
        ValueError: If ``name`` is unknown; the message lists the valid names.
    """
    try:
        cls = _TOKENIZERS[name]
    except (KeyError, TypeError):
        valid = ", ".join(repr(k) for k in sorted(_TOKENIZERS))
        raise ValueError(f"unknown tokenizer {name!r}; valid names: {valid}") from None
    return cls()
