"""Recall by question position, through the public API: names or elimination?

    python experiments/text_base_probe/positions.py SOURCE [--method M] [--distances 64,4096]
        [--distractor-facts 0] [--n 32] [--single]

``SOURCE`` is a ``train.py`` workdir (``pj.load_run``) or a base
``.safetensors`` file. On test examples 500 .. 500 + n of
``prompt_retention/d<D>_f4`` (no eval run scores them), every fact's answer is
generated greedily by ``pj.complete`` after the distractor and the questions
before it, with the true earlier answers in the context (the dataset's own
order), or, with ``--single``, after the distractor and that one question
alone. Prints first-byte and exact-match recall of the facts by the question's
position. A reader that keeps track of what it has answered is right on the
last question without reading its name; ``--single`` takes that away, and
then also counts the pairs of questions in one prompt that ask for the same
kind of value (code or word) and get the same answer: all of them for a
reader that ignores the names, almost none for one that reads them.
"""

from __future__ import annotations

import argparse
import collections
import itertools

import numpy as np

import prosg_jax as pj
from prosg_jax.data import prompt_retention

FIRST_INDEX = 500  # test examples from here on are scored by no eval run
NUM_FACTS = 4


def questions(example: dict, single: bool) -> list[tuple[str, str, str]]:
    """Each fact's ``(context, answer text, value)``, in the order asked."""
    queries, cursor, end, out = example["queries"], 0, 0, []
    for text, value, kind in zip(
        example["answers"]["text"],
        example["answers"]["value"],
        example["answers"]["kind"],
        strict=True,
    ):
        at = queries.index(text, cursor)
        cursor = at + len(text)
        if kind == prompt_retention.KIND_FACT:
            asked = queries[end:at] if single else queries[:at]
            out.append((example["distractor"] + asked, text, value))
        end = cursor
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("--method", default=None, help="default: the run's own (none for a base)")
    ap.add_argument("--distances", default="64,4096")
    ap.add_argument("--distractor-facts", type=int, default=0)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--single", action="store_true")
    args = ap.parse_args()
    if args.source.endswith(".safetensors"):
        cfg, params = pj.load_rwkv(args.source)
        run, own = (cfg, params, pj.get_tokenizer("byte")), "none"
    else:
        run, own = pj.load_run(args.source), "the run's own"
    protocol = "each question alone" if args.single else "questions in order"
    if args.distractor_facts:
        protocol += f", {args.distractor_facts}% distractor facts"
    print(f"{args.source}, method {args.method or own}, {protocol}, test #{FIRST_INDEX}+{args.n}")
    print("| D | first byte: #1 | #2 | #3 | #4 | exact: #1 | #2 | #3 | #4 | exact: all |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for distance in map(int, args.distances.split(",")):
        config = prompt_retention.PromptRetentionConfig(
            name="positions",
            distance=distance,
            num_facts=NUM_FACTS,
            distractor_facts=args.distractor_facts,
        )
        prompts, contexts, answers = [], [], []
        for i in range(FIRST_INDEX, FIRST_INDEX + args.n):
            example = prompt_retention.make_example(config, "test", i)
            for position, (context, text, value) in enumerate(questions(example, args.single)):
                prompts.append(example["prompt"])
                contexts.append(context)
                answers.append((i, position, text, text[: text.index(value) + 1], value))
        outputs = pj.complete(run, prompts, contexts, max_new_tokens=12, method=args.method)
        first, exact = collections.defaultdict(list), collections.defaultdict(list)
        by_kind = collections.defaultdict(list)  # (example, value is a code) -> outputs
        for (i, position, text, head, value), output in zip(answers, outputs, strict=True):
            first[position].append(output.startswith(head))
            exact[position].append(output.startswith(text))
            by_kind[i, value.isdigit()].append(output)
        cells = [f"{np.mean(first[p]):.1%}" for p in range(NUM_FACTS)]
        cells += [f"{np.mean(exact[p]):.1%}" for p in range(NUM_FACTS)]
        cells.append(f"{np.mean(sum(exact.values(), [])):.1%}")
        same = ""
        if args.single:
            pairs = [a == b for o in by_kind.values() for a, b in itertools.combinations(o, 2)]
            same = f" ({sum(pairs)} of {len(pairs)} same-kind pairs alike)"
        print(f"| {distance} | " + " | ".join(cells) + f"{same} |", flush=True)


if __name__ == "__main__":
    main()
