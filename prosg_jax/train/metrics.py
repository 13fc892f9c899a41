"""Training metrics: ``metrics.jsonl``, TensorBoard event files and a tqdm bar.

TensorBoard files are written with ``tensorboardX`` (no TensorFlow). Only
process 0 writes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax

# Metrics shown on the progress bar, or printed per logged step without one.
_SHOWN = ("loss", "answer_acc", "tokens_per_s", "lr")


class MetricsWriter:
    """Appends one JSON line per logged step and mirrors it to TensorBoard and the bar."""

    def __init__(self, workdir: str | Path, stage: str, *, start: int, total: int, bar: bool):
        self.stage = stage
        self.step = start  # completed steps of the stage
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        self._bar = None
        if not self.enabled:
            return
        workdir = Path(workdir)
        self._jsonl = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(workdir / "tensorboard" / stage))
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=start,
                desc=stage,
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=1.0,
            )

    def advance(self, n: int = 1) -> None:
        """Counts ``n`` completed steps (moves the bar)."""
        self.step += n
        if self._bar is not None:
            self._bar.update(n)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Logs ``metrics`` (floats) at ``step`` (completed steps of this stage)."""
        if not self.enabled:
            return
        line = {"stage": self.stage, "step": step, "time": time.time(), **metrics}
        self._jsonl.write(json.dumps(line) + "\n")
        self._jsonl.flush()
        for k, v in metrics.items():
            self._tb.add_scalar(f"{self.stage}/{k}", v, step)
        self._tb.flush()
        shown = {k: f"{metrics[k]:.4g}" for k in _SHOWN if k in metrics}
        if self._bar is not None:
            self._bar.set_postfix(shown, refresh=False)
        else:  # a batch job: one plain line per logged step
            text = " ".join(f"{k}={v}" for k, v in shown.items())
            print(f"{self.stage} step {step}: {text}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        """A line on stderr that does not break the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
