"""What every tokenizer is: the :class:`Tokenizer` protocol and the checks
on the text and ids its methods accept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

#: What ``decode`` accepts: a list/tuple of ints or a 1-D integer array.
IdsLike = Sequence[int] | np.ndarray


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of the library needs from a tokenizer.

    ``encode`` returns a 1-D ``int32`` array; ``decode`` is its inverse and
    drops padding / end-of-sequence ids instead of rendering them.
    """

    @property
    def vocab_size(self) -> int:
        """Number of ids; every id produced or accepted is in ``[0, vocab_size)``."""
        ...

    @property
    def pad_id(self) -> int:
        """Id used for padding; never produced by ``encode``."""
        ...

    @property
    def eos_id(self) -> int:
        """Id that marks the end of a sequence; never produced by ``encode``."""
        ...

    def encode(self, text: str) -> np.ndarray:
        """Encodes ``text`` to a 1-D ``int32`` array of ids."""
        ...

    def decode(self, ids: IdsLike, *, errors: str = "strict") -> str:
        """Decodes ids back to text (``errors`` as in :meth:`bytes.decode`)."""
        ...


def check_text(text: str) -> None:
    # Bytes would otherwise fail with an unhelpful AttributeError on .encode.
    if not isinstance(text, str):
        raise TypeError(f"encode expects str, got {type(text).__name__}; use encode_bytes")


def as_checked_ids(ids: IdsLike, vocab_size: int) -> np.ndarray:
    """Validates ``ids`` and returns them as a 1-D ``int64`` array.

    Args:
        ids: Token ids (list, tuple or integer array).
        vocab_size: Ids must lie in ``[0, vocab_size)``.

    Returns:
        A 1-D ``int64`` array (possibly empty).

    Raises:
        TypeError: If the ids are not integers.
        ValueError: If ``ids`` is not 1-D or an id is out of range.
    """
    arr = np.asarray(ids)
    if arr.size == 0:
        # np.asarray([]) is float64; an empty sequence is still a valid input.
        return np.zeros((0,), dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"decode expects a 1-D sequence of ids, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
    # Range check in the original dtype so huge uint64 values cannot wrap on cast.
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise ValueError(f"token id {int(arr[pos])} at position {pos} is outside [0, {vocab_size})")
    return arr.astype(np.int64, copy=False)
