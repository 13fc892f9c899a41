"""Can a base copy a digit at all? MQAR recall split by the kind of value.

    python experiments/text_base_probe/mqar_digits.py BASE [--n 256]

Scores ``BASE`` teacher-forced on the first ``--n`` validation examples of
``mqar/l128_kv8_voc100`` (keys are ids 1-49, values ids 50-99: byte ids, so the
values include the ten digits '0'-'9' at ids 50-59) and prints the accuracy of
the answers whose value is a digit and of the others.
"""

from __future__ import annotations

import argparse

import numpy as np

import prosg_jax as pj
from prosg_jax.data import mqar
from prosg_jax.data.tokenizers import ByteTokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    cfg, params = pj.load_rwkv(args.base)
    config = mqar.MqarConfig(name="probe", seq_len=128, num_kv_pairs=8, vocab_size=100)
    examples = [mqar.make_example(config, "validation", i) for i in range(args.n)]
    tokens = np.stack([e["tokens"] for e in examples])
    answers = np.stack([e["loss_mask"] for e in examples])[:, 1:].astype(bool)
    logits, _ = pj.forward(cfg, params, tokens[:, :-1])
    hit = (np.asarray(logits.argmax(-1)) == tokens[:, 1:])[answers]
    target = tokens[:, 1:][answers]
    digits = np.isin(target, ByteTokenizer().encode("0123456789"))
    print(f"{args.base}: validation mqar/l128_kv8_voc100, {args.n} examples, teacher-forced")
    print(f"digit values: {hit[digits].mean():.1%} (n={digits.sum()})")
    print(f"other values: {hit[~digits].mean():.1%} (n={(~digits).sum()})")


if __name__ == "__main__":
    main()
