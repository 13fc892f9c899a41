"""Prompt retention: facts about names in a prompt, a distractor, then questions.

Dataset names: ``prompt_retention/d{distance}_f{facts}`` plus optional
``_n{train}``, ``_val{n}``, ``_t{test}``, ``_q{queries}``, ``_s{seed}``,
``_b{percent}`` (that share of distractor sentences are facts about other
names, e.g. ``prompt_retention/d1024_f4_b50``). The records are text stored
as byte tokens; another tokenizer re-encodes their pieces so that answer
spans stay exact. Answers are the prompt's facts and a closing word.
"""

from __future__ import annotations

import re

import numpy as np

from prosg_jax.data import prompt_retention as builder
from prosg_jax.data.tokenizers import ByteTokenizer
from prosg_jax.tasks.registry import SPLIT_EXTRAS, Task, register, split_tokenized


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def encode(record: dict, tokenizer) -> dict:
    """Splits a record into prompt and continuation ids (see :class:`~.registry.Task`)."""
    prompt_text = _text(record["prompt"])
    is_fact = np.asarray([_text(k) == "fact" for k in record["answers"]["kind"]], bool)
    if isinstance(tokenizer, ByteTokenizer):
        return split_tokenized(
            record,
            len(prompt_text.encode("utf-8")),
            np.asarray(record["answers"]["start"], np.int32),
            np.asarray(record["answers"]["end"], np.int32),
            is_fact=is_fact,
        )
    # Re-encode piece by piece: distractor, then queries split around each answer.
    queries = _text(record["queries"])
    pieces = [tokenizer.encode(_text(record["distractor"]))]
    flags = [False]
    cursor = 0
    for answer in (_text(a) for a in record["answers"]["text"]):
        at = queries.index(answer, cursor)
        pieces += [tokenizer.encode(queries[cursor:at]), tokenizer.encode(answer)]
        flags += [False, True]
        cursor = at + len(answer)
    pieces += [tokenizer.encode(queries[cursor:]), np.asarray([tokenizer.eos_id], np.int32)]
    flags += [False, False]
    lengths = np.asarray([len(p) for p in pieces])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    cont = np.concatenate(pieces).astype(np.int32)
    mask = np.zeros(len(cont), np.int32)
    starts, ends = [], []
    for i, flag in enumerate(flags):
        if flag:
            mask[offsets[i] : offsets[i + 1]] = 1
            starts.append(offsets[i])
            ends.append(offsets[i + 1])
    return {
        "prompt": np.asarray(tokenizer.encode(prompt_text), np.int32),
        "cont": cont,
        "answer_mask": mask,
        "answer_start": np.asarray(starts, np.int32),
        "answer_end": np.asarray(ends, np.int32),
        "answer_is_fact": is_fact,
    }


TASK = register(
    Task(
        name="prompt_retention",
        builder=builder.PromptRetention,
        base=re.compile(r"^d(?P<distance>\d+)_f(?P<num_facts>\d+)"),
        extras={"q": "num_queries", "b": "distractor_facts", **SPLIT_EXTRAS},
        grammar="d<distance>_f<facts>[_n<train>][_val<n>][_t<test>][_q<queries>][_s<seed>]"
        "[_b<percent>]",
        encode=encode,
        # Text answers: a couple of spare tokens, since another tokenizer may
        # split the generated text differently.
        spare_answer_tokens=2,
        base_needs_byte_tokens=True,
        non_fact_answers=True,
    )
)
