"""Where a result was measured: package versions, CPU, accelerator.

:func:`environment` is recorded in a workdir's ``run.json`` (and by the eval
in ``results.json``), so a number can be traced to the software and hardware
that produced it. ``constraints.txt`` at the repository root pins the package
set the tests pass with; this records the set a given run actually used.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

# Distribution names (as pip spells them) whose versions a run records: the
# numerics stack first, then the input pipeline.
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "tensorflow-datasets",
    "grain",
)

_CPUINFO = Path("/proc/cpuinfo")


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    """Installed versions of the distributions ``names``; None for one not installed.

    Reads package metadata only, so nothing is imported (TFDS alone takes seconds).
    """
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def parse_cpu_model(cpuinfo: str) -> str | None:
    """The first ``model name`` value of a ``/proc/cpuinfo`` text, or None."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name" and value.strip():
            return value.strip()
    return None


def cpu_model(cpuinfo_path: str | os.PathLike = _CPUINFO) -> str:
    """The CPU's marketing name, e.g. ``"AMD EPYC 7B13"``.

    Linux names it in ``/proc/cpuinfo``; elsewhere (or where that file says
    nothing, as on some ARM kernels) ``platform.processor()`` is the fallback,
    which may be just the architecture.
    """
    try:
        model = parse_cpu_model(Path(cpuinfo_path).read_text(errors="replace"))
    except OSError:
        model = None
    return model or platform.processor() or platform.machine() or "unknown"


def usable_cpus() -> int | None:
    """CPUs this process may run on (its affinity mask), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def accelerator() -> dict:
    """JAX's default backend, its first device's kind and the device count.

    Imports jax (and initialises its backend): a training or eval process has
    done both already.
    """
    import jax

    return {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
    }


def environment() -> dict:
    """Software and hardware a run executes on, as a JSON-ready dict.

    Returns:
      ``{"python": "3.11.9", "packages": {"jax": "0.10.2", ...},
      "platform": "Linux-...", "cpu": {"model": ..., "count": ..., "usable": ...},
      "jax": {"backend": "cpu", "device_kind": "cpu", "device_count": 1}}``;
      a package that is not installed has version None.
    """
    return {
        "python": platform.python_version(),
        "packages": package_versions(),
        "platform": platform.platform(),
        "cpu": {"model": cpu_model(), "count": os.cpu_count(), "usable": usable_cpus()},
        "jax": accelerator(),
    }
