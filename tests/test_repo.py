"""Repository hygiene: lint/format, configs load, README and CI agree."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args):
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert exe, "ruff is part of the test extra"
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check():
    proc = _ruff("check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format():
    proc = _ruff("format", "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_every_config_loads(path):
    from prosg_jax.config import RWKVConfig

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    RWKVConfig.from_dict(config.model)  # validates the model shape


def test_ci_runs_the_readme_test_command():
    ci_cmd = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    readme = (ROOT / "README.md").read_text()
    assert f"\n{ci_cmd}\n" in readme


# Rooms of the package in the order data flows (DESIGN.md §2): a room imports
# only rooms of earlier layers. The public API (``prosg_jax/__init__.py``) sits
# above them all and no room imports it.
LAYERS = (
    ("errors", "clock", "provenance", "lowrank", "files"),
    ("config",),
    ("data", "models"),
    ("checkpoint", "decode", "prosg"),
    ("sampling",),
    ("run",),
    ("session",),
    ("tasks",),
    ("config_check",),
    ("experiment",),
    ("train", "eval", "cli"),
)
# A config asks the model-family registry when it is built (a lazy import).
UPWARD_ALLOWED = {("config", "models")}


def _room_imports() -> dict[str, set[str]]:
    import ast

    package = ROOT / "prosg_jax"

    def is_module(dotted: str) -> bool:
        path = ROOT.joinpath(*dotted.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()

    edges: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        room = "__init__" if parts == ("__init__",) else parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prosg_jax"):
                names = [f"{node.module}.{a.name}" for a in node.names]
                targets = [n for n in names if is_module(n)] or [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("prosg_jax")]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                other = parts[1] if len(parts) > 1 else "__init__"
                if other != room:
                    edges.setdefault(room, set()).add(other)
    return edges


def test_imports_flow_one_way():
    layer = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
    package = ROOT / "prosg_jax"
    rooms = {p.stem for p in package.glob("*.py")} | {
        p.parent.name for p in package.glob("*/__init__.py")
    }
    assert rooms - {"__init__"} == set(layer), "every room of prosg_jax/ has its layer"
    bad = [
        f"{room} -> {other}"
        for room, others in _room_imports().items()
        if room != "__init__"
        for other in others
        if (other == "__init__" or layer[other] >= layer[room])
        and (room, other) not in UPWARD_ALLOWED
    ]
    assert not bad, f"imports against the flow: {bad}"
