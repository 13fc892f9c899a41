"""prosg_jax.clock: phase times with JAX's compilation split out."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from prosg_jax.clock import PhaseClock


def test_a_phase_splits_compilation_from_running():
    clock = PhaseClock()
    f = jax.jit(lambda x: jnp.sin(x) * 3 + 1)  # a fresh function: compiled on its first call
    with clock.phase("run"):
        jax.block_until_ready(f(np.ones(7, np.float32)))
    first, compiled = clock.summary(), clock.compile_seconds
    assert first["programs"] == 1 and compiled > 0, first
    with clock.phase("run"):
        jax.block_until_ready(f(np.ones(7, np.float32)))  # cached: nothing compiled
        time.sleep(0.2)
    second = clock.summary()
    assert second["programs"] == 1 and clock.compile_seconds == compiled, second
    assert second["run_s"] >= first["run_s"] + 0.2 - 0.05  # the sleep is run time
    with clock.phase("other"):
        jax.block_until_ready(f(np.ones(9, np.float32)))  # a new shape: one more program
    assert clock.summary()["programs"] == 2
    assert list(clock.summary()) == ["compile_s", "run_s", "other_s", "programs"]


def test_clocks_are_independent():
    a, b = PhaseClock(), PhaseClock()
    with a.phase("x"):
        jax.block_until_ready(jax.jit(lambda x: x * 5 - 2)(np.ones(3, np.float32)))
    assert a.summary()["programs"] == 1 and b.summary() == {"compile_s": 0.0, "programs": 0}
