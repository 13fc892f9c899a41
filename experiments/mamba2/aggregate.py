"""The Mamba-2 table: each seed's joint-run rows and its SG-stage row, mean over runs.

    python experiments/mamba2/aggregate.py OUT.md SEED_DIR [SEED_DIR ...]

Each ``SEED_DIR`` holds ``joint.json`` (baselines on the base and the control,
and ProSG with the joint stage) and ``sg.json`` (ProSG with the SG stage on the
frozen base), ``eval.py`` results of one training seed
(``experiments/mamba2/run.sh``). A cell is the mean over runs ± the std across
runs [the mean of each run's evaluation-seed std].
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from prosg_jax.files import write_text

_AGG = Path(__file__).parents[1] / "default_runs" / "aggregate.py"
_spec = importlib.util.spec_from_file_location("default_runs_aggregate", _AGG)
aggregate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(aggregate)

LABELS = {
    "none@init": "none (base)",
    "repeat_prompt@init": "repeat_prompt (base)",
    "true_grad@init": "true_grad (base)",
    "none@control": "none (control)",
    "repeat_prompt@control": "repeat_prompt (control)",
    "prosg@frozen": "prosg, SG stage (frozen base)",
    "prosg": "prosg, joint stage",
}


def merged(seed_dir: Path) -> dict:
    """One results dict: the joint run's rows plus the SG stage's as ``prosg@frozen``."""
    joint = json.loads((seed_dir / "joint.json").read_text())
    sg = json.loads((seed_dir / "sg.json").read_text())
    for kind in ("mqar", "mqar_std"):
        joint[kind]["prosg@frozen"] = sg[kind]["prosg"]
    methods = [m for m in joint["config"]["methods"] if m != "prosg"]
    joint["config"]["methods"] = [*methods, "prosg@frozen", "prosg"]
    return joint


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    out, dirs = Path(argv[0]), [Path(p) for p in argv[1:]]
    results = [merged(d) for d in dirs]
    rows = aggregate.table(results)
    for method, label in LABELS.items():
        rows = [r.replace(f"| {method} |", f"| {label} |", 1) for r in rows]
    text = "\n".join(
        [
            f"# ProSG on Mamba-2: mean over {len(results)} training runs",
            "",
            "MQAR exact match on the test split (`configs/mqar_mamba2_cpu.py`, "
            "`bash experiments/mamba2/run.sh W`): mean over training runs ± std across "
            "runs [mean of each run's std over its evaluation seeds].",
            "",
            *rows,
            "",
            "Runs: " + ", ".join(f"`{d}`" for d in dirs),
            "",
        ]
    )
    write_text(out, text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
