"""provenance.environment(): what a run records about its software and hardware."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys

import jax
import pytest
from conftest import tiny_model
from train_fixtures import ROOT

import prosg_jax as pj
from prosg_jax import provenance
from prosg_jax.run import RUN_FILE, read_run_info, run_info, write_json


def test_environment_names_versions_cpu_and_device():
    env = provenance.environment()
    assert json.loads(json.dumps(env)) == env  # JSON-ready as it is
    assert env["python"] == platform.python_version()
    assert set(env["packages"]) == set(provenance.PACKAGES)
    assert env["packages"]["jax"] == jax.__version__
    assert env["packages"]["orbax-checkpoint"] == importlib.metadata.version("orbax-checkpoint")
    assert env["cpu"]["model"] and env["cpu"]["count"] >= env["cpu"]["usable"] >= 1
    assert env["jax"]["backend"] == jax.default_backend()
    assert env["jax"]["device_kind"] == jax.devices()[0].device_kind


def test_package_versions_leave_an_uninstalled_package_none():
    assert provenance.package_versions(("numpy", "no-such-dist-xyz")) == {
        "numpy": importlib.metadata.version("numpy"),
        "no-such-dist-xyz": None,
    }


def test_cpu_model_reads_cpuinfo_or_falls_back(tmp_path):
    text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
    assert provenance.parse_cpu_model(text) == "AMD EPYC 7B13"
    assert provenance.parse_cpu_model("processor\t: 0\nmodel name\t:\n") is None
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert provenance.cpu_model(cpuinfo) == "AMD EPYC 7B13"
    fallback = platform.processor() or platform.machine() or "unknown"
    assert provenance.cpu_model(tmp_path / "missing") == fallback


def test_environment_imports_no_data_or_checkpoint_library():
    # Versions come from package metadata: recording them must not pay for tfds/grain/orbax.
    code = (
        "import sys; from prosg_jax import provenance; provenance.environment(); "
        "print([m for m in ('tensorflow_datasets', 'grain', 'orbax') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("with_environment", [True, False], ids=["new", "old"])
def test_run_json_with_or_without_environment_loads(tmp_path, with_environment):
    cfg, params = tiny_model(7, vocab=258)  # the byte tokenizer's ids
    pj.save_rwkv(tmp_path / "base.safetensors", cfg, params)
    env = provenance.environment() if with_environment else None
    info = run_info(cfg, pj.ProSGConfig(), "byte", ["base"], environment=env)
    assert ("environment" in info) == with_environment  # an old run.json has no such key
    write_json(tmp_path / RUN_FILE, info)
    assert read_run_info(tmp_path).get("environment") == env
    assert pj.load_run(tmp_path).model_cfg == cfg
