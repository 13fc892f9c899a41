"""Timing shared by the benchmark scripts: alternating cases, best of N."""

from __future__ import annotations

import time


def best_of(cases: dict, repeats: int) -> dict[str, float]:
    """Fastest wall time of ``run(setup())`` per case, over ``repeats`` rounds.

    ``cases`` maps a name to ``(setup, run)``; only ``run`` is timed. The
    cases alternate within each round (after one warm-up round), so a noisy
    neighbour on a shared machine slows them alike and their ratios hold.
    """
    best = dict.fromkeys(cases, float("inf"))
    for i in range(repeats + 1):
        for name, (setup, run) in cases.items():
            arg = setup()
            t0 = time.perf_counter()
            run(arg)
            if i:  # round 0 compiles and warms up
                best[name] = min(best[name], time.perf_counter() - t0)
    return best
