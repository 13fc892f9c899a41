"""`prompt_retention`: does a model still use its prompt D tokens later?

Each example is one text, laid out as::

    prompt      facts ("The password of Talex is kodeni.") and instructions
                (answer format, required closing word); ends with "\\n"
    distractor  exactly D characters (= D byte tokens) of filler prose; with
                `distractor_facts` > 0, that share of its sentences state
                facts about *other* names (same attributes and templates,
                values never those of the prompt), which write competing
                bindings into a recurrent state the way a long generation does
    queries     "\\nQ: <question>\\nA: <formatted answer>" per queried fact,
                then "\\nFinal word: <closing word>"

followed by EOS in `tokens`. The scored tokens (`loss_mask == 1`) are the
formatted answers and the closing word: each depends only on the prompt, which
is D tokens back.

Guarantees (pinned by tests):

* Deterministic given the builder version and config: example `i` of a split
  is `make_example(config, split, i)`, seeded by `text_gen.example_seed`.
* The seed ignores the distance, so index `i` has the same facts,
  instructions and queries in every `d*_f<F>` config, and the shorter
  distractor is a prefix of the longer one: recall-vs-distance curves compare
  like with like.
* Names, values and closing words of train/validation/test come from disjoint
  pools (`text_gen.invented_pools`).
* Every answer's value occurs in the prompt and nowhere in the distractor;
  no prompt name occurs in the distractor either.
* `distractor_facts` changes the distractor alone: index `i` has the same
  prompt and queries with or without distractor facts.

Build with `python -m prosg_jax.data.build prompt_retention/d256_f8 --data_dir DIR`
(or `prosg_jax.data.build.build_dataset`) and read with `tfds.data_source`;
TensorFlow is not needed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from prosg_jax.data import text_gen
from prosg_jax.data.tokenizers import ByteTokenizer

_NAME = "prompt_retention"
_VERSION = "1.0.0"

DISTANCES = (64, 256, 1024, 4096)
FACT_COUNTS = (4, 8, 16)
DEFAULT_CONFIG_NAME = "d256_f8"
MAX_FACTS = 64

# (attribute, kind of value). "word" values are invented lowercase words,
# "code" values are four-digit numbers; both come from split-specific pools.
ATTRIBUTES = (
    ("password", "word"),
    ("home town", "word"),
    ("pet", "word"),
    ("boat", "word"),
    ("favourite dish", "word"),
    ("door code", "code"),
    ("locker number", "code"),
    ("lucky number", "code"),
)
FACT_TEMPLATES = ("The {attr} of {name} is {value}.", "{name}'s {attr} is {value}.")
QUESTION_TEMPLATES = ("What is the {attr} of {name}?", "What is {name}'s {attr}?")
# Answer formats: (description used in the instruction, opening, closing).
FORMATS = (
    ("square brackets", "[", "]"),
    ("parentheses", "(", ")"),
    ("curly braces", "{", "}"),
    ("angle brackets", "<", ">"),
    ("double quotes", '"', '"'),
)
CLOSING_CUE = "Final word:"

KIND_FACT = "fact"
KIND_CLOSING = "closing_word"


@dataclasses.dataclass(eq=False, kw_only=True)
class PromptRetentionConfig(text_gen.GeneratedSplits, tfds.core.BuilderConfig):
    """Builder config of `prompt_retention`.

    Attributes:
      distance: D, the number of distractor byte tokens between the end of the
        prompt and the first query.
      num_facts: Facts (name -> attribute value) stated in each prompt.
      num_queries: Facts asked about after the distractor; None asks about all
        of them (in random order).
      num_train: Examples in the train split.
      num_validation: Examples in the validation split.
      num_test: Examples in the test split.
      seed: Extra seed; change it to draw a different dataset of the same shape.
      distractor_facts: Percentage (0-100) of distractor sentences that state a
        fact about a name not in the prompt instead of filler prose. 0 (the
        predefined configs) leaves the distractor pure filler, which a
        recurrent state barely registers; facts compete with the prompt's.
    """

    distance: int = 256
    num_facts: int = 8
    num_queries: int | None = None
    num_train: int = 10_000
    num_validation: int = 1_000
    num_test: int = 1_000
    seed: int = 0
    distractor_facts: int = 0

    def __post_init__(self):
        if self.distance < 0:
            raise ValueError(f"distance must be >= 0, got {self.distance}.")
        if not 1 <= self.num_facts <= MAX_FACTS:
            raise ValueError(f"num_facts must be in [1, {MAX_FACTS}], got {self.num_facts}.")
        if self.num_queries is not None and not 1 <= self.num_queries <= self.num_facts:
            raise ValueError(
                f"num_queries must be in [1, num_facts={self.num_facts}] or None, "
                f"got {self.num_queries}."
            )
        if not 0 <= self.distractor_facts <= 100:
            raise ValueError(
                f"distractor_facts must be a percentage in [0, 100], got {self.distractor_facts}."
            )
        self.check_split_sizes()

    @property
    def queries_per_example(self) -> int:
        """Number of queried facts per example."""
        return self.num_facts if self.num_queries is None else self.num_queries


def config_name(distance: int, num_facts: int) -> str:
    """Name of the predefined config for distance D and a fact count."""
    return f"d{distance}_f{num_facts}"


BUILDER_CONFIGS = tuple(
    PromptRetentionConfig(
        name=config_name(d, f),
        description=f"Distance D={d} byte tokens, {f} facts per prompt, all facts queried.",
        distance=d,
        num_facts=f,
    )
    for d in DISTANCES
    for f in FACT_COUNTS
)


def get_config(name: str) -> PromptRetentionConfig:
    """Returns the predefined config `name` (e.g. "d256_f8"); ValueError if unknown."""
    return text_gen.predefined_config(BUILDER_CONFIGS, _NAME, name)


def _example_seed(config: PromptRetentionConfig, split: str, index: int) -> int:
    # The distance is deliberately left out: see the module docstring.
    return text_gen.example_seed(
        _NAME,
        _VERSION,
        config.seed,
        config.num_facts,
        config.queries_per_example,
        split,
        index,
    )


def _distractor_sentence(
    rng: np.random.Generator, *, share: float, pools: text_gen.SplitPools, banned: tuple[str, ...]
) -> str:
    """A filler sentence, or with probability `share` a fact about another name.

    The fact uses the prompt's attributes and templates with a name and value
    from the split's pools; any draw whose sentence contains a `banned`
    (lowercased) prompt name, value or closing word is redrawn, so the
    distractor competes with the prompt's bindings without ever answering a
    query.
    """
    if rng.random() >= share:
        return text_gen.filler_sentence(rng)
    while True:
        attr, kind = ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]
        pool = pools.words if kind == "word" else pools.codes
        text = FACT_TEMPLATES[int(rng.integers(len(FACT_TEMPLATES)))].format(
            attr=attr,
            name=pools.names[int(rng.integers(len(pools.names)))],
            value=pool[int(rng.integers(len(pool)))],
        )
        lowered = text.lower()
        if not any(b in lowered for b in banned):
            return text


def make_example(config: PromptRetentionConfig, split: str, index: int) -> dict[str, Any]:
    """Generates example `index` of `split`, exactly as the builder stores it.

    Args:
      config: The dataset config.
      split: "train", "validation" or "test" (selects the invented-word pools).
      index: Position of the example in its split; any int >= 0.

    Returns:
      A dict with the builder's features (see `PromptRetention._info`), numpy
      arrays for the token-level fields.

    Raises:
      ValueError: For an unknown split or a negative index.
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}.")
    pools = text_gen.invented_pools(split)
    seed = _example_seed(config, split, index)
    rng = np.random.default_rng((seed, 0))

    # --- Facts and instructions (independent of the distance). ---
    n = config.num_facts
    names = [pools.names[i] for i in rng.choice(len(pools.names), size=n, replace=False)]
    attr_idx = rng.integers(len(ATTRIBUTES), size=n)
    # Draw one spare word for the closing word so it differs from every value.
    words = [pools.words[i] for i in rng.choice(len(pools.words), size=n + 1, replace=False)]
    codes = [pools.codes[i] for i in rng.choice(len(pools.codes), size=n, replace=False)]
    closing_word = words[n]
    attributes = [ATTRIBUTES[i][0] for i in attr_idx]
    values = [words[i] if ATTRIBUTES[a][1] == "word" else codes[i] for i, a in enumerate(attr_idx)]
    fact_forms = rng.integers(len(FACT_TEMPLATES), size=n)
    fmt_desc, fmt_open, fmt_close = FORMATS[int(rng.integers(len(FORMATS)))]

    lines = ["Remember these facts."]
    lines += [
        FACT_TEMPLATES[form].format(attr=attr, name=name, value=value)
        for form, attr, name, value in zip(fact_forms, attributes, names, values, strict=True)
    ]
    lines.append(
        f"Instructions: write every answer inside {fmt_desc}, like {fmt_open}this{fmt_close}. "
        f'After the last answer, write "{CLOSING_CUE}" followed by the word {closing_word}.'
    )
    prompt = "\n".join(lines) + "\n"

    # --- Queries: text pieces, the answer ones flagged for the loss mask. ---
    query_order = rng.permutation(n)[: config.queries_per_example]
    question_forms = rng.integers(len(QUESTION_TEMPLATES), size=len(query_order))
    pieces: list[tuple[str, dict[str, str] | None]] = []
    for q, form in zip(query_order, question_forms, strict=True):
        question = QUESTION_TEMPLATES[form].format(attr=attributes[q], name=names[q])
        pieces.append((f"\nQ: {question}\nA: ", None))
        answer = f"{fmt_open}{values[q]}{fmt_close}"
        pieces.append((answer, {"text": answer, "value": values[q], "kind": KIND_FACT}))
    pieces.append((f"\n{CLOSING_CUE} ", None))
    pieces.append(
        (closing_word, {"text": closing_word, "value": closing_word, "kind": KIND_CLOSING})
    )

    # --- Distractor: its own stream, so its length does not move the rest. ---
    sentence = text_gen.filler_sentence
    if config.distractor_facts:
        sentence = functools.partial(
            _distractor_sentence,
            share=config.distractor_facts / 100,
            pools=pools,
            banned=tuple(s.lower() for s in (*names, *values, closing_word)),
        )
    distractor = text_gen.filler_text(np.random.default_rng((seed, 1)), config.distance, sentence)
    lowered = distractor.lower()
    for value in [*values, closing_word, *names]:
        if value.lower() in lowered:  # Impossible by construction (pools, redraws).
            raise RuntimeError(
                f"{value!r} from the prompt leaked into the distractor (seed {seed})."
            )

    # --- Tokens: encode piece by piece so answer offsets are exact. ---
    tok = ByteTokenizer()
    chunks = [tok.encode(prompt + distractor)]
    offset = len(chunks[0])
    answers: dict[str, list[Any]] = {"text": [], "value": [], "kind": [], "start": [], "end": []}
    mask_spans = []
    for text, meta in pieces:
        ids = tok.encode(text)
        if meta is not None:
            for key in ("text", "value", "kind"):
                answers[key].append(meta[key])
            answers["start"].append(offset)
            answers["end"].append(offset + len(ids))
            mask_spans.append((offset, offset + len(ids)))
        chunks.append(ids)
        offset += len(ids)
    chunks.append(np.array([tok.eos_id], dtype=np.int32))
    tokens = np.concatenate(chunks).astype(np.int32)
    loss_mask = np.zeros(len(tokens), dtype=np.uint8)
    for start, end in mask_spans:
        loss_mask[start:end] = 1

    return {
        "prompt": prompt,
        "distractor": distractor,
        "queries": "".join(text for text, _ in pieces),
        "tokens": tokens,
        "loss_mask": loss_mask,
        "answers": {
            "text": answers["text"],
            "value": answers["value"],
            "kind": answers["kind"],
            "start": np.asarray(answers["start"], dtype=np.int32),
            "end": np.asarray(answers["end"], dtype=np.int32),
        },
        "facts": {"name": names, "attribute": attributes, "value": values},
        "answer_format": fmt_desc,
        "closing_word": closing_word,
        "distance": config.distance,
        "num_facts": config.num_facts,
        "split": split,
        "index": index,
        "seed": seed,
    }


class PromptRetention(text_gen.LocallyGenerated, tfds.core.GeneratorBasedBuilder):
    """Facts and instructions, D tokens of distraction, then questions on them."""

    VERSION = tfds.core.Version(_VERSION)
    BUILDER_CONFIGS = list(BUILDER_CONFIGS)
    DEFAULT_CONFIG_NAME = DEFAULT_CONFIG_NAME

    @staticmethod
    def features() -> dict[str, Any]:
        text = tfds.features.Text()
        # Per-answer / per-fact fields are flat 1-D tensors rather than
        # `tfds.features.Sequence`s: they serialise about twice as fast and
        # decode to numpy arrays.
        strings = tfds.features.Tensor(shape=(None,), dtype=np.str_)
        ints = tfds.features.Tensor(shape=(None,), dtype=np.int32)
        return {
            "prompt": text,
            "distractor": text,
            "queries": text,
            "tokens": ints,
            "loss_mask": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
            "answers": {
                "text": strings,
                "value": strings,
                "kind": strings,
                "start": ints,
                "end": ints,
            },
            "facts": {"name": strings, "attribute": strings, "value": strings},
            "answer_format": text,
            "closing_word": text,
            "distance": np.int32,
            "num_facts": np.int32,
            "split": text,
            "index": np.int64,
            "seed": np.int64,
        }

    @staticmethod
    def make_example(config, split: str, index: int) -> dict[str, Any]:
        return make_example(config, split, index)
