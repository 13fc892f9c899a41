"""Can a base bind a key to a value that does not follow it? MQAR recall by key-value gap.

    python experiments/text_base_probe/mqar_gap.py BASE [BASE ...] [--n 256]

Scores each ``BASE`` teacher-forced on the first ``--n`` validation examples of
``mqar/l192_kv8_voc20_g<m>`` for gaps m = 0, 1, 2, 4: 8 one-token keys (ids
1-9) bound to values (ids 10-19), with m filler tokens between each key and
its value, in the pairs and the queries alike. Chance is 10%. In the text task
" is " (4 bytes) separates a name from its value, and "?\\nA: [" a question's
name from the answer.

The last row is a reader that ignores the keys: it knows the prompt's eight
values and the answers already given (teacher forcing shows them) and picks
uniformly among the values not yet answered. It needs no binding and gets
H(8) / 8 = 34.0% on average, not the 10% of chance, so a base near 34% has
learned the values and elimination, not the bindings.
"""

from __future__ import annotations

import argparse

import numpy as np

import prosg_jax as pj
from prosg_jax.data import mqar

GAPS = (0, 1, 2, 4)


def examples(gap: int, n: int) -> list[dict]:
    """The first ``n`` validation examples of ``mqar/l192_kv8_voc20_g<gap>``."""
    config = mqar.MqarConfig(
        name="probe", vocab_size=20, seq_len=192, num_kv_pairs=8, value_gap=gap
    )
    return [mqar.make_example(config, "validation", i) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bases", nargs="+", metavar="BASE")
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    print(f"validation mqar/l192_kv8_voc20_g<m>, {args.n} examples, teacher-forced")
    print("| base | " + " | ".join(f"gap {g}" for g in GAPS) + " |")
    print("|---|" + "---|" * len(GAPS))
    for base in args.bases:
        cfg, params = pj.load_rwkv(base)
        cells = []
        for gap in GAPS:
            batch = examples(gap, args.n)
            tokens = np.stack([e["tokens"] for e in batch])
            answers = np.stack([e["loss_mask"] for e in batch])[:, 1:].astype(bool)
            logits, _ = pj.forward(cfg, params, tokens[:, :-1])
            hit = (np.asarray(logits.argmax(-1)) == tokens[:, 1:])[answers]
            cells.append(f"{hit.mean():.1%}")
        print(f"| {base} | " + " | ".join(cells) + " |")
    # Every pair is queried once, so the i-th answer is one of 8 - i values left: H(8) / 8.
    nameless = f"{np.mean(1 / np.arange(8, 0, -1)):.1%}"
    print(
        "| reader ignoring the keys (values + elimination) | "
        + " | ".join([nameless] * len(GAPS))
        + " |"
    )


if __name__ == "__main__":
    main()
