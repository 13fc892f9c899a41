"""Where the text base's recall fails: per-byte accuracy of the facts' values.

    python experiments/text_base_probe/probe.py [--base B] [--facts 4] [--distance 64] [--n 64]
                                            [--split validation]

Scores the base LM alone (no ProSG), teacher-forced, on the first ``--n``
``--split`` examples of ``prompt_retention/d<distance>_f<facts>``, over the
bytes of each fact's value (no answer delimiters):

- ``question``: the dataset's own questions ("What is the boat of Nerex?").
  Reports the accuracy of the value's first byte, of its later bytes given
  the true earlier ones, exact match by value kind (4-digit code or invented
  word), and how many first-byte errors are the first byte of *another*
  fact's value in the same prompt (a retrieved but mis-bound value).
  Then the first-byte accuracy by the question's position among the queries,
  and how many first-byte errors repeat an *earlier* question's answer: a
  model that answers by elimination (a value not yet given) is right on the
  last question whatever its key, and almost never repeats an earlier answer.
  Beside each position, the accuracy of two readers that ignore the names:
  both know which facts were asked already and pick at random among the
  rest that fit; the *nameless* reader knows only the value's kind (code or
  word, which the attribute gives), the *attribute* reader knows the
  attribute itself ("boat"), i.e. it binds attributes to values.
  Also the most frequent prediction (teacher-forced bytes) for a code.
- ``restated``: after the distractor, each fact's own sentence is repeated
  up to its value ("Nerex's boat is "), the cue a copying (induction)
  mechanism would need. The format is one the base never trained on.

Then the mean pairwise cosine similarity of the input embeddings of the ten
digits and of twenty lowercase letters: how distinct the model keeps them.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np

import prosg_jax as pj
from prosg_jax.data import prompt_retention
from prosg_jax.data.tokenizers import ByteTokenizer


def rows_of(example: dict, restated: bool) -> tuple[str, list[tuple[int, int, str]]]:
    """The scored text and each fact value's ``(start, end, value)`` span in bytes."""
    text = example["prompt"] + example["distractor"]
    spans = []
    if restated:
        for line in example["prompt"].splitlines():
            for value in example["facts"]["value"]:
                if line.endswith(f" {value}."):
                    text += "\n" + line[: -len(value) - 1]
                    start = len(text.encode())
                    spans.append((start, start + len(value.encode()), value))
                    text += f"{value}."
        return text, spans
    queries, cursor = example["queries"], 0
    for value, kind in zip(example["answers"]["value"], example["answers"]["kind"], strict=True):
        at = queries.index(value, cursor)
        cursor = at + len(value)
        if kind == "fact":
            start = len((text + queries[:at]).encode())
            spans.append((start, start + len(value.encode()), value))
    return text + queries, spans


def mean_cosine(emb: np.ndarray, ids: np.ndarray) -> float:
    """Mean cosine similarity over distinct pairs of the embedding rows ``ids``."""
    x = emb[ids] / np.linalg.norm(emb[ids], axis=1, keepdims=True)
    c = x @ x.T
    return float(c[~np.eye(len(ids), dtype=bool)].mean())


def by_position(examples, rows, pred: np.ndarray, tokens: np.ndarray) -> str:
    """First-byte accuracy of the question rows by position, beside two name-blind readers.

    Both readers know which facts were asked before and pick uniformly among
    the rest that fit: of the value's kind (digits or letters, the nameless
    reader) or with the question's attribute (the attribute reader).
    Also counts the first-byte errors that repeat an earlier question's answer.
    """
    model = collections.defaultdict(list)
    readers = {
        "nameless": collections.defaultdict(list),
        "attribute": collections.defaultdict(list),
    }
    repeats = errors = 0
    for i, (example, (_, spans)) in enumerate(zip(examples, rows, strict=True)):
        facts = list(zip(example["facts"]["value"], example["facts"]["attribute"], strict=True))
        attribute_of = dict(facts)
        for position, (start, _, value) in enumerate(spans):
            right = bool(pred[i, start - 1] == tokens[i, start])
            earlier_starts = [s for s, *_ in spans[:position]]
            asked = {v for *_, v in spans[:position]}
            rest = [(v, a) for v, a in facts if v not in asked]
            same_kind = [v for v, _ in rest if v.isdigit() == value.isdigit()]
            same_attribute = [v for v, a in rest if a == attribute_of[value]]
            model[position].append(right)
            readers["nameless"][position].append(1 / len(same_kind))
            readers["attribute"][position].append(1 / len(same_attribute))
            errors += not right
            repeats += not right and pred[i, start - 1] in tokens[i, earlier_starts]

    def cells(by_pos) -> str:
        overall = np.mean(sum(by_pos.values(), []))
        return ", ".join(f"#{p + 1} {np.mean(by_pos[p]):.1%}" for p in sorted(by_pos)) + (
            f", all {overall:.1%}"
        )

    return (
        f"questions, first byte right by position: {cells(model)}\n"
        + "".join(f"  {name} reader: {cells(r)}\n" for name, r in readers.items())
        + f"errors that repeat an earlier answer's first byte: {repeats}/{errors}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="pretrained/tiny_rwkv7_base.safetensors")
    ap.add_argument("--facts", type=int, default=4)
    ap.add_argument("--distance", type=int, default=64)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--split", default="validation", choices=("train", "validation", "test"))
    args = ap.parse_args()
    cfg, params = pj.load_rwkv(args.base)
    tok = ByteTokenizer()
    config = prompt_retention.PromptRetentionConfig(
        name="probe", distance=args.distance, num_facts=args.facts
    )
    examples = [prompt_retention.make_example(config, args.split, i) for i in range(args.n)]
    name = f"d{args.distance}_f{args.facts}"
    print(f"{args.base}: {args.split} {name}, {args.n} examples, teacher-forced")
    print(
        "| cue | first byte | later bytes | exact: codes | exact: words | mis-bound first bytes |"
    )
    print("|---|---|---|---|---|---|")
    code_preds = []  # the question rows' predictions for each code value
    for restated in (False, True):
        rows = [rows_of(e, restated) for e in examples]
        ids = [tok.encode(text) for text, _ in rows]
        tokens = np.zeros((len(ids), max(map(len, ids))), np.int32)
        for i, row in enumerate(ids):
            tokens[i, : len(row)] = row
        logits, _ = pj.forward(cfg, params, tokens)
        pred = np.asarray(logits.argmax(-1))
        first, later, exact = [], [], {"code": [], "word": []}
        misbound = 0
        for i, (_, spans) in enumerate(rows):
            firsts = {v[0] for v in examples[i]["facts"]["value"]}
            for start, end, value in spans:
                ok = pred[i, start - 1 : end - 1] == tokens[i, start:end]
                first.append(ok[0])
                later.extend(ok[1:])
                exact["code" if value.isdigit() else "word"].append(ok.all())
                if value.isdigit() and not restated:
                    code_preds.append(tok.decode(pred[i, start - 1 : end - 1].tolist()))
                guess = tok.decode([int(pred[i, start - 1])])
                misbound += (not ok[0]) and guess in firsts - {value[0]}
        errors = len(first) - sum(first)
        print(
            f"| {'restated fact' if restated else 'question'} | {np.mean(first):.1%} | "
            f"{np.mean(later):.1%} | {np.mean(exact['code']):.1%} (n={len(exact['code'])}) | "
            f"{np.mean(exact['word']):.1%} (n={len(exact['word'])}) | "
            + (f"{misbound}/{errors} |" if not restated else "– |")
        )
        if not restated:
            positions = by_position(examples, rows, pred, tokens)
    print("\n" + positions)
    if code_preds:
        top, count = collections.Counter(code_preds).most_common(1)[0]
        print(f"\nmost frequent prediction for a code: {top!r}, {count} of {len(code_preds)}")
    emb = np.asarray(params["emb"]["weight"])
    digits, letters = tok.encode("0123456789"), tok.encode("abdefgiklmnoprstuvxz")
    print(
        f"\nmean pairwise cosine of input embeddings: digits {mean_cosine(emb, digits):.2f}, "
        f"lowercase letters {mean_cosine(emb, letters):.2f}"
    )


if __name__ == "__main__":
    main()
