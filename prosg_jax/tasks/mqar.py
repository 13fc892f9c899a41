"""MQAR (multi-query associative recall): key-value pairs, then queries on them.

Dataset names: ``mqar/l{seq_len}_kv{pairs}`` plus optional ``_voc{vocab_size}``,
``_d{distance}`` (filler between the pairs and the queries), ``_k{tokens}``
(tokens per key, e.g. ``mqar/l128_kv8_voc20_k3``), ``_g{tokens}`` (filler
between each key and its value), ``_n{train}``, ``_val{n}``, ``_t{test}``,
``_s{seed}``. The records are token ids, fed to the model as they are; the
prompt is the key-value context and every answer is a one-token value.
"""

from __future__ import annotations

import re

import numpy as np

from prosg_jax.data import mqar as builder
from prosg_jax.tasks.registry import SPLIT_EXTRAS, Task, register, split_tokenized


def encode(record: dict, tokenizer) -> dict:
    """Cuts a record after its key-value pairs (see :class:`~.registry.Task`)."""
    del tokenizer  # the records are ids already
    # A query's value sits a fixed offset after its first key token (key_tokens
    # + value_gap); a pair, like a query, is that offset + 1 tokens long.
    queries = np.asarray(record["query_positions"], np.int32)
    offset = int(np.flatnonzero(record["loss_mask"])[0]) - int(queries.min())
    n = (offset + 1) * len(record["values"])
    starts = queries + offset
    return split_tokenized(record, n, starts, starts + 1, is_fact=np.ones(len(starts), bool))


TASK = register(
    Task(
        name="mqar",
        builder=builder.Mqar,
        base=re.compile(r"^l(?P<seq_len>\d+)_kv(?P<num_kv_pairs>\d+)"),
        extras={
            "voc": "vocab_size",
            "d": "distance",
            "k": "key_tokens",
            "g": "value_gap",
            **SPLIT_EXTRAS,
        },
        grammar="l<seq_len>_kv<pairs>[_voc<vocab>][_d<distance>][_k<key tokens>][_g<gap>]"
        "[_n<train>][_val<n>][_t<test>][_s<seed>]",
        encode=encode,
        token_ids=True,
    )
)
