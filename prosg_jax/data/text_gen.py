"""Deterministic text generation shared by the synthetic datasets.

* `example_seed`: a stable 63-bit seed from any tuple of strings/ints, so every
  example can be regenerated on its own from (config, split, index).
* `invented_pools`: invented names, word values and numeric codes, each split
  into disjoint train/validation/test pools, so the test split measures recall
  of unseen pairs rather than memorised ones.
* `filler_text`: grammatical nonsense built from `wordlists`, used as the
  distractor span. It is random enough not to be trivially compressible and,
  by construction, never contains an invented word, a digit or a bracket
  (unless the caller's own `sentence` function puts them there).

No global RNG is used anywhere: callers pass a `np.random.Generator`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from prosg_jax.data import wordlists

SPLITS = ("train", "validation", "test")

# Fractions of every invented pool given to each split. The partition is fixed
# (it does not depend on any dataset config), so pools are disjoint across
# configs as well as across splits.
_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
# Seed of the one fixed permutation applied to each pool before partitioning.
_POOL_PERMUTATION_SEED = 20231101


def example_seed(*parts: str | int) -> int:
    """Returns a stable, platform-independent 63-bit seed for `parts`.

    Python's `hash` is salted per process, so a cryptographic digest of the
    parts' text is used instead.

    Args:
      *parts: Strings and integers that identify one example (dataset name,
        version, config fields, split, index).

    Returns:
      A non-negative integer < 2**63, usable with `np.random.default_rng`.
    """
    text = "\x1f".join(str(p) for p in parts)
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class SplitPools(NamedTuple):
    """Invented-word pools for one split.

    Attributes:
      names: Capitalised invented entity names.
      words: Lowercase invented words (fact values and closing words).
      codes: Four-digit numeric codes, as strings.
    """

    names: tuple[str, ...]
    words: tuple[str, ...]
    codes: tuple[str, ...]


@functools.cache
def _filler_substrings(min_len: int) -> frozenset[str]:
    """All substrings of length >= `min_len` of every filler word."""
    words = set(
        itertools.chain(
            wordlists.DETERMINERS,
            wordlists.ADJECTIVES,
            wordlists.NOUNS,
            wordlists.TRANSITIVE_VERBS,
            wordlists.INTRANSITIVE_VERBS,
            wordlists.ADVERBS,
            wordlists.PREPOSITIONS,
            wordlists.CONJUNCTIONS,
        )
    )
    subs = set()
    for w in words:
        for i in range(len(w)):
            for j in range(i + min_len, len(w) + 1):
                subs.add(w[i:j])
    return frozenset(subs)


def _partition(items: Sequence[str], split: str) -> tuple[str, ...]:
    """Returns `split`'s share of `items` after one fixed permutation."""
    order = np.random.default_rng(_POOL_PERMUTATION_SEED).permutation(len(items))
    bounds = np.cumsum([0, *(int(f * len(items)) for f in _SPLIT_FRACTIONS)])
    bounds[-1] = len(items)
    i = SPLITS.index(split)
    return tuple(items[k] for k in order[bounds[i] : bounds[i + 1]])


@functools.cache
def _all_pools() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Enumerates every invented name, word and code, in a fixed order."""
    banned = _filler_substrings(min_len=4)
    names = [
        "".join(parts).capitalize()
        for parts in itertools.product(
            wordlists.NAME_ONSETS,
            wordlists.NAME_VOWELS,
            wordlists.NAME_ONSETS,
            wordlists.NAME_VOWELS,
            wordlists.NAME_CODAS,
        )
    ]
    words = [
        "".join(parts)
        for parts in itertools.product(
            wordlists.VALUE_ONSETS,
            wordlists.VALUE_VOWELS,
            wordlists.VALUE_ONSETS,
            wordlists.VALUE_VOWELS,
            wordlists.VALUE_ONSETS,
            wordlists.VALUE_VOWELS,
        )
    ]

    # Drop any invented word that could occur inside a filler word (filler words
    # are separated by spaces, so that is the only way one could appear in the
    # distractor). Every invented word is >= 5 letters, so checking against
    # filler substrings of length >= 4 is more than enough.
    def ok(w: str) -> bool:
        return w.lower() not in banned

    codes = [str(c) for c in range(1000, 10000)]
    return (
        tuple(filter(ok, names)),
        tuple(filter(ok, words)),
        tuple(codes),
    )


@functools.cache
def invented_pools(split: str) -> SplitPools:
    """Returns the invented-word pools of `split`.

    The three splits' pools are disjoint and fixed for a given `wordlists`
    version, whatever the dataset config.

    Args:
      split: One of "train", "validation", "test".

    Returns:
      The split's `SplitPools`.

    Raises:
      ValueError: If `split` is unknown.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    names, words, codes = _all_pools()
    return SplitPools(
        names=_partition(names, split),
        words=_partition(words, split),
        codes=_partition(codes, split),
    )


# Upper bound on the uniforms one sentence consumes: two clauses of at most
# 1 (form) + 3 noun phrases x 4 + 2 (verb, preposition), plus 2 coin flips.
_DRAWS_PER_SENTENCE = 2 * (1 + 3 * 4 + 2) + 2


def filler_sentence(rng: np.random.Generator) -> str:
    """One random sentence from a tiny grammar over the filler word lists."""
    w = wordlists
    # One vectorised draw per sentence: calling the generator per word would
    # dominate generation time for long distractors.
    draws = iter(rng.random(_DRAWS_PER_SENTENCE).tolist())

    def pick(words: Sequence[str]) -> str:
        return words[int(next(draws) * len(words))]

    def noun_phrase() -> str:
        # An adjective half of the time keeps the phrase length varied.
        if next(draws) < 0.5:
            return f"{pick(w.DETERMINERS)} {pick(w.ADJECTIVES)} {pick(w.NOUNS)}"
        return f"{pick(w.DETERMINERS)} {pick(w.NOUNS)}"

    def clause() -> str:
        form = int(next(draws) * 4)
        if form == 0:
            return f"{noun_phrase()} {pick(w.TRANSITIVE_VERBS)} {noun_phrase()}"
        if form == 1:
            return f"{noun_phrase()} {pick(w.INTRANSITIVE_VERBS)} {pick(w.ADVERBS)}"
        if form == 2:
            return (
                f"{noun_phrase()} {pick(w.INTRANSITIVE_VERBS)} "
                f"{pick(w.PREPOSITIONS)} {noun_phrase()}"
            )
        return (
            f"{noun_phrase()} {pick(w.TRANSITIVE_VERBS)} {noun_phrase()} "
            f"{pick(w.PREPOSITIONS)} {noun_phrase()}"
        )

    text = clause()
    if next(draws) < 0.4:
        text = f"{text} {pick(w.CONJUNCTIONS)} {clause()}"
    return text[0].upper() + text[1:] + "."


def filler_text(
    rng: np.random.Generator,
    length: int,
    sentence: Callable[[np.random.Generator], str] = filler_sentence,
) -> str:
    """Returns exactly `length` characters of random filler prose.

    With the default `sentence`, the text is ASCII letters, spaces and full
    stops only. Longer requests from an identically seeded generator extend
    shorter ones (the shorter text is a prefix), so distractors of different
    lengths share their beginning.

    Args:
      rng: Source of randomness; consumed.
      length: Number of characters (== byte tokens) to return; >= 0.
      sentence: Draws one sentence from `rng` (`filler_sentence` by default);
        the prefix property holds for any function that only reads `rng`.

    Returns:
      The filler text.

    Raises:
      ValueError: If `length` is negative.
    """
    if length < 0:
        raise ValueError(f"Filler length must be >= 0, got {length}.")
    parts: list[str] = []
    size = -1  # Length of " ".join(parts): one space fewer than sentences.
    while size < length:
        text = sentence(rng)
        parts.append(text)
        size += len(text) + 1
    # Cutting mid-word is fine: a prefix of a filler word is still a substring
    # of a filler word, so no invented word can appear.
    return " ".join(parts)[:length]


def generating_line(name: str, split_sizes: dict[str, int], directory: str) -> str:
    """The one console line announcing that a dataset is being generated.

    E.g. ``"Generating mqar/l128_kv8 (train 20,000 / validation 3,000 / test
    3,000 examples) into /tmp/tfds/mqar/l128_kv8/1.0.0"``; empty splits are left out.
    """
    sizes = " / ".join(f"{split} {n:,}" for split, n in split_sizes.items() if n > 0)
    return f"Generating {name} ({sizes or 'no'} examples) into {directory}"


def predefined_config(configs: Sequence, dataset: str, name: str):
    """The config called ``name`` among a dataset's predefined ``configs``.

    Raises:
      ValueError: naming the known configs, if there is no such config.
    """
    for config in configs:
        if config.name == name:
            return config
    known = ", ".join(c.name for c in configs)
    raise ValueError(f"Unknown {dataset} config {name!r}; known: {known}.")


class GeneratedSplits:
    """Mixin of a builder config with ``num_train``, ``num_validation`` and
    ``num_test`` fields: the split sizes, and their check."""

    def split_sizes(self) -> dict[str, int]:
        """Returns {split: number of examples}."""
        return {
            "train": self.num_train,
            "validation": self.num_validation,
            "test": self.num_test,
        }

    def check_split_sizes(self) -> None:
        """Raises ValueError for a negative split size."""
        for split, n in self.split_sizes().items():
            if n < 0:
                raise ValueError(f"num_{split} must be >= 0, got {n}.")


class LocallyGenerated:
    """Split and example generation for a TFDS builder whose record ``i`` of a
    split is ``make_example(builder_config, split, i)`` and whose records have
    the ``features()`` it declares; mix in before
    ``tfds.core.GeneratorBasedBuilder``. Nothing is downloaded.

    TFDS announces a build with "Downloading and preparing dataset Unknown
    size (download: Unknown size, generated: Unknown size, ...)" and ends it
    with "... downloaded and prepared to ..." (``termcolor`` to stdout, from
    the two hooks overridden here): nothing is downloaded and no size is
    known in advance, so one line of ours on stderr replaces both.
    """

    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(self, *, file_format: str | None = None, **kwargs):
        # array_record is the format `tfds.data_source` (and so grain) reads
        # without TensorFlow; make it the default rather than tfrecord.
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=sys.modules[type(self).__module__].__doc__,
            features=tfds.features.FeaturesDict(self.features()),
            # Keep the stored order == index order, so record i is
            # `make_example(config, split, i)`; readers shuffle anyway.
            disable_shuffling=True,
        )

    def _log_download_bytes(self) -> None:
        print(
            generating_line(
                f"{self.name}/{self.builder_config.name}",
                self.builder_config.split_sizes(),
                str(self.data_dir),
            ),
            file=sys.stderr,
            flush=True,
        )

    def _log_download_done(self) -> None:
        pass  # The line above said where; TFDS's "downloaded" would be untrue.

    def _split_generators(self, dl_manager):
        del dl_manager  # Generated locally: nothing to download.
        return {
            split: self._generate_examples(split=split, num_examples=n)
            for split, n in self.builder_config.split_sizes().items()
            if n > 0
        }

    def _generate_examples(self, split: str, num_examples: int):
        for index in range(num_examples):
            yield index, self.make_example(self.builder_config, split, index)
