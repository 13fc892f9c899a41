"""What a training run leaves in its workdir for readers, and :func:`load_run`.

``train.py`` writes, next to its orbax checkpoints, at every checkpoint:

* ``base.safetensors`` — the base model in BlinkDL's official layout
  (:func:`prosg_jax.save_rwkv`), readable by :func:`prosg_jax.load_rwkv` and,
  converted to ``.pth``, by the reference ``rwkv`` package;
* ``prosg.safetensors`` — the SG module, one tensor per leaf under
  ``"<target>/<leaf path>"`` (e.g. ``"blocks.0.att.value/ln/weight"``);
* ``run.json`` — the model and ProSG configs, the tokenizer, the stages done
  and the environment that wrote it (:func:`prosg_jax.provenance.environment`).

All three are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from prosg_jax.checkpoint import load_rwkv
from prosg_jax.config import ProSGConfig, RWKVConfig
from prosg_jax.data.tokenizers import get_tokenizer
from prosg_jax.errors import UserError
from prosg_jax.sampling import Run

BASE_FILE = "base.safetensors"
SG_FILE = "prosg.safetensors"
RUN_FILE = "run.json"


def _flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    return {prefix: np.array(tree, np.float32)}


def save_sg_params(path: str | Path, sg_params: dict) -> Path:
    """Writes the SG module's parameters as flat float32 safetensors, atomically."""
    from safetensors.numpy import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(_flatten(sg_params), str(tmp))
    tmp.replace(path)
    return path


def load_sg_params(path: str | Path) -> dict:
    """Reads :func:`save_sg_params`' file back into the nested float32 pytree."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SG checkpoint not found: {path}")
    try:
        flat = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read SG checkpoint {path}: {e}") from e
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(value, jnp.float32)
    return tree


def write_json(path: str | Path, obj) -> Path:
    """Atomic JSON write."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def run_info(
    model_cfg: RWKVConfig,
    prosg_cfg: ProSGConfig,
    tokenizer: str,
    stages,
    *,
    init_from: str | None = None,
    environment: dict | None = None,
) -> dict:
    """The ``run.json`` contents.

    Args:
      model_cfg: the base model's config.
      prosg_cfg: the ProSG config.
      tokenizer: the tokenizer's name.
      stages: the training stages done so far.
      init_from: the base checkpoint the run started from (``config.init_from``,
        "" for none), stored under ``"init_from"``; omitted when None.
      environment: :func:`prosg_jax.provenance.environment` of the writing
        process, stored under ``"environment"``; omitted when None. Readers
        never require it (run.json files written before it existed lack it).
    """
    info = {
        "model": dataclasses.asdict(model_cfg),
        "prosg": dataclasses.asdict(prosg_cfg),
        "tokenizer": tokenizer,
        "stages_done": list(stages),
    }
    if init_from is not None:
        info["init_from"] = init_from
    if environment is not None:
        info["environment"] = environment
    return info


def read_run_info(workdir: str | Path) -> dict | None:
    """``run.json`` of a workdir, or None when there is none."""
    path = Path(workdir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from e
    expected = {"model": dict, "prosg": dict, "tokenizer": str}
    if not isinstance(info, dict):
        raise UserError(f"{path} is not a run record: a JSON object with {sorted(expected)}")
    for key, kind in expected.items():
        if not isinstance(info.get(key), kind):
            raise UserError(
                f"{path} is not a run record: {key!r} must be a JSON "
                f"{'object' if kind is dict else 'string'} (written by train.py)"
            )
    return info


def prosg_config_from_dict(d: dict) -> ProSGConfig:
    d = dict(d)
    d["matrices"] = tuple(d["matrices"])
    if d.get("layers") is not None:
        d["layers"] = tuple(d["layers"])
    return ProSGConfig(**d)


def load_run(workdir: str | os.PathLike) -> Run:
    """The latest exported checkpoint of a training run, on the default device.

    Args:
      workdir: the ``--workdir`` of ``train.py``.

    Returns:
      :class:`prosg_jax.Run` with the base model (``base.safetensors``, in
      the dtype the run computes in), the ProSG config, the SG parameters
      (``prosg.safetensors``; None when no ProSG stage has run) and the tokenizer.

    Raises:
      FileNotFoundError: the workdir holds no exported run.
      UserError: its files are inconsistent.
    """
    workdir = Path(workdir)
    info = read_run_info(workdir)
    if info is None or not (workdir / BASE_FILE).is_file():
        raise FileNotFoundError(f"no trained run in {workdir} (run train.py with this --workdir)")
    try:
        want = RWKVConfig(**info["model"])
        prosg_cfg = prosg_config_from_dict(info["prosg"])
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"{workdir / RUN_FILE} holds an invalid config: {e}") from e
    model_cfg, params = load_rwkv(workdir / BASE_FILE, dtype=jnp.dtype(want.dtype))
    if model_cfg != want:
        raise UserError(f"{workdir / BASE_FILE} does not match {workdir / RUN_FILE}")
    sg_path = workdir / SG_FILE
    sg_params = load_sg_params(sg_path) if sg_path.is_file() else None
    return Run(
        model_cfg=model_cfg,
        params=params,
        prosg_cfg=prosg_cfg,
        sg_params=sg_params,
        tokenizer=get_tokenizer(info["tokenizer"]),
    )
