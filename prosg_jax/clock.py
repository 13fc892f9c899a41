"""Wall time per phase of a job, with JAX's compilation time split out.

JAX reports every trace, lowering and XLA compile through
:mod:`jax.monitoring`; a :class:`PhaseClock` adds those durations up, so a
phase's wall time splits into the compilation it triggered and the rest
(running the programs). It also counts the XLA programs compiled.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import jax

# The events JAX emits for each program it builds (jax/_src/dispatch.py).
_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_COMPILE = "/jax/core/compile/backend_compile_duration"

_lock = threading.Lock()
_totals = {"seconds": 0.0, "programs": 0}
_listening = False


def _on_event(event: str, duration: float, **_) -> None:
    if event in (_TRACE, _LOWER, _COMPILE):
        with _lock:
            _totals["seconds"] += duration
            _totals["programs"] += event == _COMPILE


def compile_totals() -> tuple[float, int]:
    """``(seconds, programs)`` compiled in this process since the first clock was made."""
    with _lock:
        return _totals["seconds"], _totals["programs"]


class PhaseClock:
    """Accumulates wall seconds per named phase and the compilation inside them.

    >>> clock = PhaseClock()
    >>> with clock.phase("read"):
    ...     pass
    >>> sorted(clock.summary())
    ['compile_s', 'programs', 'read_s']
    """

    def __init__(self) -> None:
        global _listening
        with _lock:
            if not _listening:  # one listener per process: jax keeps every one registered
                jax.monitoring.register_event_duration_secs_listener(_on_event)
                _listening = True
        self.seconds: dict[str, float] = {}
        self.compile_seconds = 0.0
        self.programs = 0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Times the block as ``name``, less the compilation it triggered.

        The block must wait for its results (``jax.block_until_ready`` or a
        host copy), or their run time lands in a later phase.
        """
        c0, n0 = compile_totals()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            wall = time.perf_counter() - t0
            c1, n1 = compile_totals()
            self.compile_seconds += c1 - c0
            self.programs += n1 - n0
            self.seconds[name] = self.seconds.get(name, 0.0) + wall - (c1 - c0)

    def summary(self) -> dict[str, float | int]:
        """``{"compile_s": …, "<phase>_s": …, "programs": n}``, seconds rounded to 0.1."""
        out: dict[str, float | int] = {"compile_s": round(self.compile_seconds, 1)}
        out |= {f"{k}_s": round(v, 1) for k, v in self.seconds.items()}
        out["programs"] = self.programs
        return out
