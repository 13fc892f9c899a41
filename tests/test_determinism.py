"""Reproducible by construction: one config, two fresh workdirs, the same bits."""

from __future__ import annotations

import numpy as np
from train_fixtures import read_metrics, tiny_config

from prosg_jax.run import BASE_FILE, SG_FILE
from prosg_jax.train import trainer


def _config():
    """The tiny experiment cut to what a joint step needs: one layer, one target."""
    config = tiny_config(base=0, joint=2)
    # base with 0 steps exports the seeded initialisation untrained (no compile);
    # joint then trains the base and the SG module together: both parameter sets move.
    config.train.stages = "base,joint"
    config.model.n_layer = 1
    config.prosg.matrices = "att.value"
    # Both datasets of the mixture padded to one batch shape (PR_TRAIN's own
    # widths, MQAR_TRAIN's are 64/64): one compile, and the mixture draws still run.
    config.data.prompt_len = 320
    config.data.cont_len = 192
    return config


def _saved(workdir) -> dict[str, np.ndarray]:
    """Every tensor of the exported base and SG files, keyed ``"<file>:<tensor>"``."""
    from safetensors.numpy import load_file

    return {
        f"{name}:{key}": value
        for name in (BASE_FILE, SG_FILE)
        for key, value in load_file(str(workdir / name)).items()
    }


def test_two_runs_of_one_config_save_bit_identical_parameters(tmp_path):
    # Each workdir generates its own datasets (<workdir>/tfds), so data
    # generation, shuffling and the mixture draws are part of what must repeat.
    a, b = tmp_path / "a", tmp_path / "b"
    trainer.train(_config(), a)
    trainer.train(_config(), b)

    saved_a, saved_b = _saved(a), _saved(b)
    assert sorted(saved_a) == sorted(saved_b)
    differ = [k for k in saved_a if not np.array_equal(saved_a[k], saved_b[k])]
    assert not differ, f"not bit-identical: {differ}"
    losses = [[m["loss"] for m in read_metrics(w)] for w in (a, b)]
    assert losses[0] == losses[1] and len(losses[0]) == 2
    # Not vacuous: the joint steps moved the delta scales off their zero init.
    scales = [v for k, v in saved_a.items() if k.startswith(SG_FILE) and k.endswith("/scale")]
    assert scales and any(np.any(s != 0) for s in scales)
