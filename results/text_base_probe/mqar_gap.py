"""Can a base bind a key to a value that does not follow it? MQAR recall by key-value gap.

    python results/text_base_probe/mqar_gap.py BASE [BASE ...] [--n 256]

Scores each ``BASE`` teacher-forced on the first ``--n`` validation examples of
``mqar/l192_kv8_voc20_g<m>`` for gaps m = 0, 1, 2, 4: 8 one-token keys (ids
1-9) bound to values (ids 10-19), with m filler tokens between each key and
its value, in the pairs and the queries alike. Chance is 10%. In the text task
" is " (4 bytes) separates a name from its value, and "?\\nA: [" a question's
name from the answer.
"""

from __future__ import annotations

import argparse

import numpy as np

import prosg_jax as pj
from prosg_jax.data import mqar

GAPS = (0, 1, 2, 4)


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
            config = mqar.MqarConfig(
                name="probe", vocab_size=20, seq_len=192, num_kv_pairs=8, value_gap=gap
            )
            examples = [mqar.make_example(config, "validation", i) for i in range(args.n)]
            tokens = np.stack([e["tokens"] for e in examples])
            answers = np.stack([e["loss_mask"] for e in examples])[:, 1:].astype(bool)
            logits, _ = pj.forward(cfg, params, tokens[:, :-1])
            hit = (np.asarray(logits.argmax(-1)) == tokens[:, 1:])[answers]
            cells.append(f"{hit.mean():.1%}")
        print(f"| {base} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
