"""A real multi-process run: 2 processes × 2 CPU devices match 1 process × 4 devices.

The processes join through ``jax.distributed.initialize`` with a coordinator on
localhost (``--config.distributed=True`` and ``JAX_COORDINATOR_ADDRESS`` /
``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``) and their collectives run over
gloo, as on a cluster of CPU hosts. Every process builds the same global batch
and keeps its rows, so the data — and the trained parameters, up to the order
of float sums — do not depend on the number of processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from train_fixtures import MQAR_TRAIN

from prosg_jax import tasks
from prosg_jax.tasks import datasets

TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir, data_dir, devices: int, distributed: bool, **env) -> subprocess.Popen:
    environ = dict(os.environ)
    environ.update(env)
    environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), environ.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [
            sys.executable,
            str(TESTS / "multihost_driver.py"),
            str(workdir),
            str(data_dir),
            "1" if distributed else "0",
        ],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def _metrics(workdir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("stage", "step", "loss", "answer_acc", "lr")} for r in rows]


def test_two_processes_train_like_one(tmp_path):
    data = tmp_path / "data"
    datasets.prepare(tasks.parse_dataset(MQAR_TRAIN), str(data))  # built before 3 readers
    single = _start(tmp_path / "one", data, 4, False)
    port = _free_port()
    procs = [
        _start(
            tmp_path / "two",
            data,
            2,
            True,
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
        )
        for i in range(2)
    ]
    for p in (single, *procs):
        _finish(p)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len(one) == len(two) == 6  # 3 base + 3 prosg steps, logged once (by process 0)
    for a, b in zip(one, two, strict=True):
        assert (a["stage"], a["step"], a["answer_acc"], a["lr"]) == (
            b["stage"],
            b["step"],
            b["answer_acc"],
            b["lr"],
        )
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
    for name in ("base.safetensors", "prosg.safetensors"):
        a, b = load_file(tmp_path / "one" / name), load_file(tmp_path / "two" / name)
        assert a.keys() == b.keys()
        for k in a:
            scale = max(float(np.abs(a[k]).max()), 1e-6)
            np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-4 * scale, err_msg=k)
