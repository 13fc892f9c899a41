"""`mqar`: multi-query associative recall (Zoology, Arora et al. 2023).

Each example is a sequence of `seq_len + distance + 1` integer tokens over its
own vocabulary (no byte tokenizer)::

    k1 v1 k2 v2 ... kN vN | j1 u1 j2 u2 ... (distance) | x x k3 v3 x x x k1 v1 x ...

The first `2N` tokens bind N distinct keys to N distinct values. Every key is
then queried exactly once, in random order: the key re-appears and the model
must predict its value next. Query slots are pairs of positions after the
context, chosen without replacement with Zoology's power law over the gap
(`p(gap = i) ∝ i ** (power_a - 1)`, so most queries come soon after the
context); the remaining positions are filler.

`distance` (0 in Zoology) inserts that many tokens between the context and
the first query slot: distractor bindings `j u`, each a key that is never
queried (not one of the example's N keys) followed by a random value. They
are what a long generation does to a recurrent state, writing new
associations over the prompt's; plain value filler does not: a 2-layer
RWKV-7 trained at distance 0 still recalls 91% of `l128_kv8_voc256` answers
after 1,024 value-filler tokens, and 0.3% after 1,024 distractor-binding
tokens. The seed ignores the distance and the distractor is
drawn last, so example `i` has the same pairs, queries and query gaps at every
distance, its distance-0 tokens are those of the plain config, and a shorter
distractor is a prefix of a longer one.

The model sees `tokens[:-1]` and predicts `tokens[1:]` (so at distance 0 it
sees exactly `seq_len` inputs, like Zoology's `input_seq_len`); `loss_mask`
marks the answer value tokens.

Vocabulary: id 0 is padding and never appears in an example; key tokens are
`[1, vocab_size // 2)`, values `[vocab_size // 2, vocab_size)`.

The features: `tokens`, `loss_mask`, `keys` (`[N * key_tokens]`, each key's
ids in a row), `values` (`[N]`), `query_positions` (`[N]`, where each query's
first key token sits; its value follows the key).

`key_tokens` (1 in Zoology) makes each key a sequence of that many key tokens,
so a pair is `a b c v` and a query repeats `a b c` before its value. Keys are
distinct as sequences but share tokens, so with few key ids (e.g. 9 ids, 3
tokens) no single token tells which key it is: the model has to compose the
key from several tokens, as it must for a name spelled in bytes.
`value_gap` puts that many filler tokens between a key and its value, in the
pairs and the queries (`a b c x x x x v`): the model has to carry the key
across them before it writes or reads the binding, as in a sentence, where
" is " separates a name from its value. With one token per key and no gap the
examples are exactly those of the plain layout.

Known pitfall, handled: Zoology fills the non-query positions with tokens drawn
from the whole vocabulary, keys included. Once answers are fed back as inputs
(teacher forcing, as `targets = inputs shifted left` requires), a stray key in
the filler followed by any token reads as a new key -> value binding that
contradicts ("overwrites") the pair the model must recall, so some answers
become unknowable. Here filler is drawn from the value range only, so each key
occurs exactly twice: in its pair and in its single query, and every query is
followed by the value it was bound to.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from prosg_jax.data import text_gen

_NAME = "mqar"
_VERSION = "1.0.0"

PAD_ID = 0
SEQ_LENS = (64, 128, 256, 512)
KV_PAIRS = (4, 8, 16, 32, 64)
DEFAULT_CONFIG_NAME = "l256_kv16"


@dataclasses.dataclass(eq=False, kw_only=True)
class MqarConfig(text_gen.GeneratedSplits, tfds.core.BuilderConfig):
    """Builder config of `mqar` (defaults follow the Zoology paper).

    Attributes:
      vocab_size: Token ids are in [0, vocab_size); 0 is padding.
      seq_len: Model input length; examples store `seq_len + 1` tokens.
      num_kv_pairs: Key-value pairs in the context; each is queried once.
      power_a: Power-law parameter of the query gap distribution (1.0 is
        uniform, Zoology uses 0.01).
      distance: Tokens of distractor bindings (a multiple of `pair_len`)
        between the context and the query slots (0 = Zoology's layout).
      key_tokens: Tokens per key (1 = Zoology's layout).
      value_gap: Filler tokens between a key and its value, in the pairs and
        the queries alike (0 = Zoology's layout).
      num_train: Examples in the train split.
      num_validation: Examples in the validation split.
      num_test: Examples in the test split.
      seed: Extra seed; change it to draw a different dataset of the same shape.
    """

    vocab_size: int = 8192
    seq_len: int = 256
    num_kv_pairs: int = 16
    power_a: float = 0.01
    distance: int = 0
    key_tokens: int = 1
    value_gap: int = 0
    num_train: int = 100_000
    num_validation: int = 3_000
    num_test: int = 3_000
    seed: int = 0

    def __post_init__(self):
        span = self.pair_len
        if self.key_tokens < 1:
            raise ValueError(f"key_tokens must be >= 1, got {self.key_tokens}.")
        if self.value_gap < 0:
            raise ValueError(f"value_gap must be >= 0, got {self.value_gap}.")
        if self.num_kv_pairs < 1:
            raise ValueError(f"num_kv_pairs must be >= 1, got {self.num_kv_pairs}.")
        if self.seq_len % span:
            raise ValueError(
                f"seq_len must be a multiple of the pair length key_tokens + value_gap + 1 = "
                f"{span} (even for Zoology's pairs), got {self.seq_len}."
            )
        if self.seq_len < 2 * span * self.num_kv_pairs:
            raise ValueError(
                f"seq_len={self.seq_len} is too small for {self.num_kv_pairs} pairs: "
                f"need seq_len >= {2 * span} * num_kv_pairs = {2 * span * self.num_kv_pairs}."
            )
        keys = self.num_keys
        if keys < self.num_kv_pairs:
            raise ValueError(
                f"vocab_size={self.vocab_size} is too small for {self.num_kv_pairs} distinct "
                f"keys: {self.vocab_size // 2 - 1} key ids give {keys} keys of "
                f"{self.key_tokens} token(s)."
            )
        if self.vocab_size - self.first_value_id < self.num_kv_pairs:
            raise ValueError(
                f"vocab_size={self.vocab_size} is too small for {self.num_kv_pairs} distinct "
                f"values: it has {self.vocab_size - self.first_value_id} value ids."
            )
        if keys >= 2**63:
            raise ValueError(
                f"{self.key_tokens} key tokens over vocab_size={self.vocab_size} give "
                f"{keys} keys, more than int64 indexes: use fewer key tokens."
            )
        if self.distance and keys == self.num_kv_pairs:
            raise ValueError(
                f"vocab_size={self.vocab_size} leaves no unqueried key for the distractor: "
                f"{keys} keys of {self.key_tokens} token(s) for {self.num_kv_pairs} pairs."
            )
        if not self.power_a > 0:
            raise ValueError(f"power_a must be > 0, got {self.power_a}.")
        if self.distance < 0 or self.distance % span:
            raise ValueError(
                f"distance must be a multiple >= 0 of the pair length key_tokens + value_gap "
                f"+ 1 = {span} (even for Zoology's pairs), got {self.distance}."
            )
        self.check_split_sizes()

    @property
    def pair_len(self) -> int:
        """Tokens per pair or query: the key's, the gap's, then the value."""
        return self.key_tokens + self.value_gap + 1

    @property
    def num_keys(self) -> int:
        """Distinct keys: sequences of `key_tokens` key ids."""
        return (self.vocab_size // 2 - 1) ** self.key_tokens

    @property
    def first_value_id(self) -> int:
        """Smallest value id; keys are [1, first_value_id)."""
        return self.vocab_size // 2


def config_name(seq_len: int, num_kv_pairs: int) -> str:
    """Name of the predefined config for a sequence length and pair count."""
    return f"l{seq_len}_kv{num_kv_pairs}"


BUILDER_CONFIGS = tuple(
    MqarConfig(
        name=config_name(length, kv),
        description=(
            f"MQAR, vocab 8192, {length} input tokens, {kv} key-value pairs, power_a=0.01."
        ),
        seq_len=length,
        num_kv_pairs=kv,
    )
    for length in SEQ_LENS
    for kv in KV_PAIRS
    if 4 * kv <= length
)


def get_config(name: str) -> MqarConfig:
    """Returns the predefined config `name` (e.g. "l256_kv16"); ValueError if unknown."""
    return text_gen.predefined_config(BUILDER_CONFIGS, "mqar", name)


def make_example(config: MqarConfig, split: str, index: int) -> dict[str, Any]:
    """Generates example `index` of `split`, exactly as the builder stores it.

    Args:
      config: The dataset config.
      split: "train", "validation" or "test" (part of the seed).
      index: Position of the example in its split; any int >= 0.

    Returns:
      A dict with the builder's features (see `Mqar._info`).

    Raises:
      ValueError: For an unknown split or a negative index.
    """
    if split not in text_gen.SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {text_gen.SPLITS}.")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}.")
    # Fields added after the first release enter the seed only when they differ from
    # their defaults, so the examples of the plain layout keep their bytes.
    key_seed = () if config.key_tokens == 1 else (config.key_tokens,)
    key_seed += ("value_gap", config.value_gap) if config.value_gap else ()
    seed = text_gen.example_seed(
        _NAME,
        _VERSION,
        config.seed,
        config.vocab_size,
        config.seq_len,
        config.num_kv_pairs,
        repr(float(config.power_a)),
        *key_seed,
        split,
        index,
    )
    rng = np.random.default_rng(seed)
    n, k, g = config.num_kv_pairs, config.key_tokens, config.value_gap
    span = config.pair_len
    key_at, value_at = np.arange(k), k + g  # offsets in a pair; the gap keeps its filler
    first_value = config.first_value_id
    # A key is drawn as its index among all num_keys sequences of key ids.
    key_codes = rng.choice(config.num_keys, size=n, replace=False)
    keys = _key_ids(key_codes, k, first_value)
    values = first_value + rng.choice(config.vocab_size - first_value, size=n, replace=False)

    # Query slots are span-long runs of positions after the span * n context tokens.
    context = span * n
    num_slots = (config.seq_len - context) // span
    p = config.power_a * np.arange(1, num_slots + 1) ** (config.power_a - 1)
    gaps = rng.choice(num_slots, size=n, replace=False, p=p / p.sum())
    query_positions = context + span * gaps

    # Filler only from the value range: a key never appears outside its pair
    # and its query (see the module docstring).
    tokens = rng.integers(first_value, config.vocab_size, size=config.seq_len + 1)
    for starts in (span * np.arange(n), query_positions):
        tokens[starts[:, None] + key_at] = keys
        tokens[starts + value_at] = values
    loss_mask = np.zeros(config.seq_len + 1, dtype=np.uint8)
    loss_mask[query_positions + value_at] = 1
    if config.distance:
        # Drawn after everything else and not part of the seed: see the module docstring.
        # One uniform pair per binding keeps a shorter distractor a prefix of a longer one.
        # The key is uniform over the unqueried keys: the j-th code not in key_codes.
        # Then the value and the gap's filler, uniform over the value range.
        u = rng.random((config.distance // span, 2 + g))
        codes = (u[:, 0] * (config.num_keys - n)).astype(np.int64)
        for queried in np.sort(key_codes):
            codes += codes >= queried
        values_and_gap = first_value + (u[:, 1:] * (config.vocab_size - first_value)).astype(
            np.int64
        )
        distractor = np.concatenate(
            [_key_ids(codes, k, first_value), values_and_gap[:, 1:], values_and_gap[:, :1]],
            axis=1,
        ).reshape(-1)
        tokens = np.concatenate([tokens[:context], distractor, tokens[context:]])
        loss_mask = np.concatenate(
            [loss_mask[:context], np.zeros(config.distance, np.uint8), loss_mask[context:]]
        )
        query_positions = query_positions + config.distance
    return {
        "tokens": tokens.astype(np.int32),
        "loss_mask": loss_mask,
        "keys": keys.reshape(-1).astype(np.int32),
        "values": values.astype(np.int32),
        "query_positions": query_positions.astype(np.int32),
        "split": split,
        "index": index,
        "seed": seed,
    }


def _key_ids(codes: np.ndarray, key_tokens: int, first_value: int) -> np.ndarray:
    """Key indices `[m]` -> key token ids `[m, key_tokens]`: base `first_value - 1` digits + 1."""
    base = first_value - 1
    powers = base ** np.arange(key_tokens - 1, -1, -1, dtype=np.int64)
    return 1 + (np.asarray(codes, np.int64)[:, None] // powers) % base


class Mqar(text_gen.LocallyGenerated, tfds.core.GeneratorBasedBuilder):
    """Multi-query associative recall, as in the Zoology benchmark."""

    VERSION = tfds.core.Version(_VERSION)
    BUILDER_CONFIGS = list(BUILDER_CONFIGS)
    DEFAULT_CONFIG_NAME = DEFAULT_CONFIG_NAME

    @staticmethod
    def features() -> dict[str, Any]:
        ids = tfds.features.Tensor(shape=(None,), dtype=np.int32)
        return {
            "tokens": ids,
            "loss_mask": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
            "keys": ids,
            "values": ids,
            "query_positions": ids,
            "split": tfds.features.Text(),
            "index": np.int64,
            "seed": np.int64,
        }

    @staticmethod
    def make_example(config, split: str, index: int) -> dict[str, Any]:
        return make_example(config, split, index)
