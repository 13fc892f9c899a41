"""Tables of the frozen-base variance study (``experiments/frozen_base/run.sh``).

    python experiments/frozen_base/aggregate.py results/frozen_base

Reads every ``b<B>_sg<S>.json`` there (``eval.py``'s results of the SG stage
at seed S on base seed B) and writes ``runs.md``: each run's row, then the
spread over SG seeds on one base, over bases at one SG seed, and over all
runs. Each subfolder is a variant (``run.sh W RUNS VARIANT``): its runs on
base 0 and its ``flags.txt`` make one row of ``variants.md``, beside the
plain SG stage's. A cell is the mean over runs ± the std across runs
(ddof=1) [the mean of each run's evaluation-seed std].
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

from prosg_jax.files import write_text

_AGG = Path(__file__).parents[1] / "default_runs" / "aggregate.py"
_spec = importlib.util.spec_from_file_location("default_runs_aggregate", _AGG)
aggregate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(aggregate)

_NAME = re.compile(r"^b(\d+)_sg(\d+)\.json$")


def _cell(results: list[dict], method: str, column: str) -> str:
    """:func:`aggregate.cell`; one run: its value [its evaluation-seed std]."""
    if len(results) == 1:
        r = results[0]
        return f"{r['mqar'][method][column]:.1%} [{r['mqar_std'][method][column]:.1%}]"
    return aggregate.cell(results, method, column)


def _on_base(runs: dict[tuple[int, int], dict], base: int) -> list[tuple[int, int]]:
    """The ``(base, SG seed)`` keys of ``runs`` on one base, in seed order."""
    return [k for k in sorted(runs) if k[0] == base]


def tables(runs: dict[tuple[int, int], dict]) -> list[str]:
    """Markdown: per-run rows, then grouped means, for ``none`` (the base) and ``prosg``."""
    columns = next(iter(runs.values()))["config"]["mqar"]
    head = ["| runs | method | " + " | ".join(f"D={aggregate.distance(c)}" for c in columns) + " |"]
    head.append("|---" * (len(columns) + 2) + "|")
    groups: list[tuple[str, list[tuple[int, int]]]] = [
        (f"base {b}, SG seed {s}", [(b, s)]) for b, s in sorted(runs)
    ]
    bases = sorted({b for b, _ in runs})
    for base in bases:
        on_base = _on_base(runs, base)
        if len(on_base) > 1:
            groups.append((f"base {base}, SG seeds {[s for _, s in on_base]}", on_base))
    at_sg0 = [k for k in sorted(runs) if k[1] == 0]
    if len(at_sg0) > 1:
        groups.append((f"bases {[b for b, _ in at_sg0]}, SG seed 0", at_sg0))
    if len(runs) > len(at_sg0) and len(bases) > 1:
        groups.append((f"all {len(runs)} runs", sorted(runs)))
    lines = list(head)
    for label, keys in groups:
        results = [runs[k] for k in keys]
        for method in ("none", "prosg"):
            cells = [_cell(results, method, c) for c in columns]
            lines.append(f"| {label} | {method} | " + " | ".join(cells) + " |")
    return lines


def read_runs(folder: Path) -> dict[tuple[int, int], dict]:
    """``(base seed, SG seed) → eval.py results`` of the ``b<B>_sg<S>.json`` in ``folder``."""
    return {
        (int(m.group(1)), int(m.group(2))): json.loads(p.read_text())
        for p in sorted(folder.iterdir())
        if (m := _NAME.match(p.name))
    }


def variant_table(reference: list[dict], variants: dict[str, tuple[str, list[dict]]]) -> list[str]:
    """Markdown: the plain SG stage's ``prosg`` row, then each variant's ``prosg`` row
    and, where the variant changes the base (``none`` differs), its ``none`` row."""
    columns = reference[0]["config"]["mqar"]
    lines = [
        "| variant | runs | method | "
        + " | ".join(f"D={aggregate.distance(c)}" for c in columns)
        + " |",
        "|---" * (len(columns) + 3) + "|",
    ]

    def row(name: str, results: list[dict], method: str) -> str:
        cells = [_cell(results, method, c) for c in columns]
        return f"| {name} | {len(results)} | {method} | " + " | ".join(cells) + " |"

    lines.append(row("base alone", reference[:1], "none"))
    lines.append(row("SG stage (reference)", reference, "prosg"))
    for name, (_, results) in variants.items():
        if any(r["mqar"]["none"] != reference[0]["mqar"]["none"] for r in results):
            lines.append(row(name, results, "none"))
        lines.append(row(name, results, "prosg"))
    return lines


def write_variants(folder: Path, reference: list[dict]) -> str | None:
    """Writes ``variants.md`` from the variant subfolders of ``folder`` (None if there are none)."""
    variants = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        runs = read_runs(sub)
        on_base0 = [runs[k] for k in _on_base(runs, 0)]
        if on_base0:
            variants[sub.name] = ((sub / "flags.txt").read_text().strip(), on_base0)
    if not variants:
        return None
    text = "\n".join(
        [
            "# Frozen-base ProSG: variants (issue 34, steps 2-3)",
            "",
            "Each variant is `configs/mqar_distance_cpu.py`'s SG stage on the shipped base "
            "(base 0) with the flags below, at SG seeds 0, 1, 2, scored by `eval.py` on the "
            "test split (3 evaluation seeds × 16 examples × 8 answers). A cell: mean over "
            "training runs ± std across runs [mean of each run's evaluation-seed std]; one "
            "run: its value [its evaluation-seed std]. `none` is the base alone, or, for a "
            "variant that changes the base, its base without deltas. Command: "
            '`bash experiments/frozen_base/run.sh W "0:0 0:1 0:2" VARIANT`.',
            "",
            *variant_table(reference, variants),
            "",
            "Flags:",
            "",
            *[f"- `{name}`: `{flags}`" for name, (flags, _) in variants.items()],
            "",
        ]
    )
    write_text(folder / "variants.md", text)
    return text


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit(__doc__)
    folder = Path(argv[0])
    runs = read_runs(folder)
    if not runs:
        raise SystemExit(f"no b<B>_sg<S>.json results in {folder}")
    text = "\n".join(
        [
            "# Frozen-base ProSG: how much a training run moves it",
            "",
            "`configs/mqar_distance_cpu.py`'s SG stage (six targets, base frozen), "
            "scored by `eval.py` on the test split (3 evaluation seeds × 16 examples "
            "× 8 answers). `none` is the base alone. A cell: mean over training runs "
            "± std across runs [mean of each run's evaluation-seed std]; one run: "
            "its value [its evaluation-seed std]. Command: "
            "`bash experiments/frozen_base/run.sh W`.",
            "",
            *tables(runs),
            "",
        ]
    )
    write_text(folder / "runs.md", text)
    print(text)
    reference = [runs[k] for k in _on_base(runs, 0)]
    variants = write_variants(folder, reference) if reference else None
    if variants:
        print(variants)


if __name__ == "__main__":
    main(sys.argv[1:])
