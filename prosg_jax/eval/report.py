"""The evaluation report: the Markdown tables and the recall-vs-distance plot."""

from __future__ import annotations

import dataclasses
import os
import re

from prosg_jax import tasks
from prosg_jax.files import atomic_write

INIT_MODEL = "init"  # the row suffix naming config.init_from

# --------------------------------------------------------------------------- reports


def retention_kind(share: int) -> str:
    """Results key of ``prompt_retention`` with ``share`` % distractor facts."""
    return "prompt_retention" if share == 0 else f"prompt_retention_b{share}"


def _share_text(share: int) -> str:
    return f", {share}% distractor facts" if share else ""


def _set_text(cfg: dict, share: int) -> str:
    """``f4``, ``f4, 1 question``, ``f4, 50% distractor facts``: what a table scores."""
    questions = cfg.get("num_queries", 0)  # 0 or absent: every fact asked
    asked = f", {questions} question{'s' if questions > 1 else ''}" if questions else ""
    return f"f{cfg['num_facts']}{asked}{_share_text(share)}"


def _table(title, values, spreads, columns, *, fmt) -> list[str]:
    lines = [f"### {title}", "", "| method | " + " | ".join(columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for m, row in values.items():
        cells = []
        for c in columns:
            v = row.get(c)
            s = (spreads or {}).get(m, {}).get(c)
            cells.append("–" if v is None else fmt(v) + ("" if s is None else f" ± {fmt(s)}"))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def results_table(results: dict) -> str:
    """``results.md``: exact match (mean ± std over seeds) and answer perplexity."""
    cfg = results["config"]
    d_cols = [str(d) for d in cfg["distances"]]
    m_cols = cfg["mqar"]
    pct = "{:.1%}".format
    lines = [
        "# Recall vs distance",
        "",
        f"Exact match of each answer (greedy, after teacher-forced context), mean ± std over "
        f"seeds {cfg['seeds']} ({cfg['num_examples']} {cfg.get('split', 'test')} examples "
        "per seed; "
        f"{cfg['seed_meaning']}). Columns: distractor length D in tokens.",
        "",
    ]
    models = {m.partition("@")[2] for m in cfg.get("methods", [])} - {""}
    if models:  # older results have no suffixed rows
        named = "; ".join(f"`@{k}` = `{cfg['models'][k]}`" for k in sorted(models))
        lines += [
            f"Rows: a bare method runs on the trained run in `{cfg['workdir']}`; `method@model` "
            f"runs it on a base checkpoint without an SG module: {named}"
            + (
                " (`config.init_from`, the base the run started from)"
                if INIT_MODEL in models
                else ""
            )
            + ".",
            "",
        ]
    shares = cfg.get("distractor_facts", [0]) if d_cols else []  # older results: filler only
    for share in shares:
        kind = retention_kind(share)
        title = f"prompt_retention ({_set_text(cfg, share)})"
        lines += _table(title, results[kind], results[f"{kind}_std"], d_cols, fmt=pct)
        if results.get(f"{kind}_facts"):  # absent from older results
            lines += _table(
                f"{title}, facts only (closing word excluded)",
                results[f"{kind}_facts"],
                results[f"{kind}_facts_std"],
                d_cols,
                fmt=pct,
            )
    if m_cols:
        lines += _table("MQAR", results["mqar"], results["mqar_std"], m_cols, fmt=pct)
    for share in shares:
        lines += _table(
            f"Answer-token perplexity (prompt_retention{_share_text(share)})",
            results["perplexity"][retention_kind(share)],
            None,
            d_cols,
            fmt="{:.3g}".format,
        )
    if m_cols:
        lines += _table(
            "Answer-token perplexity (MQAR)",
            results["perplexity"]["mqar"],
            None,
            m_cols,
            fmt="{:.3g}".format,
        )
    n = results["n_answers"]
    counts = [
        f"D={k}{_share_text(share)}: {v}"
        for share in shares
        for k, v in n[retention_kind(share)].items()
    ]
    counts += [f"{k}: {v}" for k, v in n.get("mqar", {}).items()]
    lines.append("Answers scored per method: " + ", ".join(counts))
    return "\n".join(lines) + "\n"


_NOT_SHAPE = ("name", "description", "distance")


def mqar_distances(configs) -> dict[str, int]:
    """MQAR config → distance, when the configs differ in distance alone (a curve)."""
    specs = {c: tasks.parse_dataset(f"mqar/{c}").config for c in configs}

    def shape(x):  # every builder field but the name and the distance
        return [getattr(x, f.name) for f in dataclasses.fields(x) if f.name not in _NOT_SHAPE]

    shapes = [shape(x) for x in specs.values()]
    if len(specs) < 2 or any(s != shapes[0] for s in shapes):
        return {}
    return {c: x.distance for c, x in specs.items()}


def plot(results: dict, path: str | os.PathLike) -> None:
    """``recall_vs_distance.png``: one line per method, error bars = std over seeds.

    One panel for ``prompt_retention`` (if any distance was evaluated) and one
    for MQAR configs that differ only in their distance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    panels = []
    for share in cfg.get("distractor_facts", [0]) if cfg["distances"] else []:
        title = f"prompt_retention recall ({_set_text(cfg, share)})"
        panels.append((title, retention_kind(share), {str(d): d for d in cfg["distances"]}))
    mqar_d = mqar_distances(cfg["mqar"])
    if mqar_d:
        task = re.sub(r"_d\d+", "", cfg["mqar"][0])
        panels.append((f"MQAR recall ({task})", "mqar", mqar_d))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), dpi=120, squeeze=False)
    for ax, (title, kind, labels) in zip(axes[0], panels, strict=True):
        order = sorted(labels, key=labels.get)
        xs = [labels[c] for c in order]
        for m, row in results[kind].items():
            ys = [row[c] for c in order]
            es = [results[f"{kind}_std"][m][c] for c in order]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m)
        # symlog: MQAR curves start at D = 0, which a log axis cannot show
        ax.set_xscale("symlog", base=2, linthresh=min((x for x in xs if x > 0), default=1))
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("distance D (distractor tokens between prompt and questions)")
        ax.set_ylabel("exact match")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, fig.savefig)
    plt.close(fig)
