"""Reading official BlinkDL RWKV checkpoints (``.pth`` / ``.safetensors``).

``load_rwkv`` detects the model family from the key names, derives the
:class:`~prosg_jax.config.RWKVConfig` from the tensor shapes, and checks the
file against the exact layout that config implies before any array reaches
the model: a wrong, truncated or foreign file fails with one clear line.

``.pth`` files are read with ``torch.load(..., weights_only=True)``, which
refuses pickled code; torch is an optional extra (``pip install
prosg_jax[torch]``) needed only for that format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from prosg_jax.config import RWKVConfig
from prosg_jax.files import atomic_write
from prosg_jax.models.family import Family, families
from prosg_jax.models.layers import RWKV5_6_KEYS
from prosg_jax.models.lm import all_finite, check_params, check_state, model_family


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, of an unknown layout, or inconsistent."""


def _unsupported_format(path: Path) -> CheckpointError:
    return CheckpointError(
        f"unsupported checkpoint format {path.suffix!r}: use .pth or .safetensors"
    )


def _dtype_name(dtype) -> str:
    name = jnp.dtype(dtype).name
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {name}")
    return name


def _read_pth(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CheckpointError(
            f"reading {path.name} needs torch: pip install 'prosg_jax[torch]'"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from e
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(
            f"unknown checkpoint layout in {path}: expected a flat dict of tensors"
        )
    out = {}
    for k, v in obj.items():
        if not v.is_floating_point():
            raise CheckpointError(f"tensor {k!r} in {path} has non-float dtype {v.dtype}")
        out[k] = v.detach().to(torch.float32).numpy()
    return out


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The file's tensors as float32 numpy arrays, and its header metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        # The flax framework reads bfloat16, which plain numpy cannot.
        with safe_open(str(path), framework="flax") as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    out = {}
    for k, v in raw.items():
        if not jnp.issubdtype(v.dtype, jnp.floating):
            raise CheckpointError(f"tensor {k!r} in {path} has non-float dtype {v.dtype}")
        out[k] = np.asarray(v.astype(jnp.float32))
    return out, header


# The safetensors header key under which save_rwkv records the model's shape fields.
META_KEY = "prosg_jax.model"


def _model_meta(path: Path, header: Mapping[str, str]) -> dict:
    """What a checkpoint says of its model beyond tensor shapes: the shape fields
    :func:`save_rwkv` records in a safetensors ``header``, else a ``config.json``
    beside the file (a ``transformers`` model directory); ``{}`` when neither."""
    if META_KEY in header:
        return _json_object(header[META_KEY], f"{path}'s {META_KEY} header")
    sidecar = path.with_name("config.json")
    if sidecar.is_file():
        return _json_object(sidecar.read_text(), str(sidecar))
    return {}


def _json_object(text: str, where: str) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where} is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where} must hold a JSON object, got {type(obj).__name__}")
    return obj


def read_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """All tensors of a ``.pth`` or ``.safetensors`` file as float32 numpy arrays,
    and what the file says of its model beyond their shapes (:func:`_model_meta`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".pth":
        return _read_pth(path), _model_meta(path, {})
    if path.suffix == ".safetensors":
        tensors, header = _read_safetensors(path)
        return tensors, _model_meta(path, header)
    raise _unsupported_format(path)


def detect_family(keys) -> Family:
    """The model family whose official layout the key names follow; RWKV-5/6 and
    foreign layouts are rejected."""
    keys = list(keys)
    for family in families():
        if family.detect is not None and family.detect(keys):
            return family
    if any(s in k for k in keys for s in RWKV5_6_KEYS):
        raise CheckpointError("RWKV-5/6 checkpoints are not supported; use RWKV-4 or RWKV-7")
    known = [f.name for f in families() if f.detect is not None]
    raise CheckpointError(
        f"unknown checkpoint layout: not a {'/'.join(known)} state dict (first keys: {keys[:4]})"
    )


def _shape(tensors: Mapping[str, np.ndarray], key: str, axis: int) -> int:
    if key not in tensors:
        raise CheckpointError(f"checkpoint is missing {key!r}")
    shape = tensors[key].shape
    if len(shape) <= axis:
        raise CheckpointError(f"{key!r} has shape {shape}, expected at least {axis + 1} dims")
    return int(shape[axis])


def config_from_tensors(
    tensors: Mapping[str, np.ndarray],
    dtype: str,
    meta: Mapping | None = None,
    family: Family | None = None,
) -> RWKVConfig:
    """The :class:`RWKVConfig` implied by a state dict's key names and shapes
    (under canonical names: :func:`_canonical_tensors`) and by ``meta``
    (:func:`read_checkpoint`), for the fields shapes cannot tell. ``family``:
    the layout's family when the caller has detected it already."""
    family = family or detect_family(tensors)
    block_re = re.compile(rf"^{re.escape(family.layer_prefix)}\.(\d+)\.")
    layers = {int(m.group(1)) for k in tensors if (m := block_re.match(k))}
    if not layers:
        raise CheckpointError(f"checkpoint has no '{family.layer_prefix}.<i>.' tensors")
    if layers != set(range(len(layers))):
        # Checked before any layout is built: one stray "blocks.100000." key
        # must not make us enumerate a hundred thousand missing layers.
        gap = min(set(range(max(layers) + 1)) - layers)
        prefix = f"{family.layer_prefix}.{max(layers)}."
        stray = sorted(k for k in tensors if k.startswith(prefix))[:1]
        raise CheckpointError(
            f"block indices are not contiguous from 0: no block {gap}, yet {stray[0]!r} exists"
        )
    n_layer = max(layers) + 1
    try:
        fields = family.config_fields(
            tensors, lambda key, axis: _shape(tensors, key, axis), n_layer, dict(meta or {})
        )
        return RWKVConfig(version=family.version, n_layer=n_layer, dtype=dtype, **fields)
    except ValueError as e:  # shapes that no valid model has (e.g. C % head_size != 0)
        raise CheckpointError(f"inconsistent tensor shapes: {e}") from e


def _canonical_tensors(
    tensors: Mapping[str, np.ndarray],
) -> tuple[Family, dict[str, np.ndarray]]:
    """The state dict's family, and the dict under that family's ``checkpoint_layout``
    names (another release's names mapped, tied weights filled in); unchanged for a
    family with one naming."""
    family = detect_family(tensors)
    if family.canonical_tensors is None:
        return family, dict(tensors)
    return family, family.canonical_tensors(tensors)


def official_layout(cfg: RWKVConfig) -> list[tuple[str, tuple, tuple[int, ...]]]:
    """``(official key, path in params, official shape)`` of every tensor of ``cfg``'s model.

    Raises:
      CheckpointError: the model's family has no official checkpoint format.
    """
    family = model_family(cfg)
    if family.checkpoint_layout is None:
        raise CheckpointError(f"{family.name} models have no official checkpoint format")
    return family.checkpoint_layout(cfg)


def _set_path(tree: dict, path: tuple, value) -> None:
    for part in path[:-1]:
        tree = tree[part] if isinstance(part, int) else tree.setdefault(part, {})
    tree[path[-1]] = value


def params_from_tensors(
    cfg: RWKVConfig, tensors: Mapping[str, np.ndarray], dtype=jnp.float32
) -> dict:
    """Checks a state dict against ``cfg``'s exact layout and builds the param pytree."""
    family = model_family(cfg)
    layout = official_layout(cfg)
    expected = {k for k, _, _ in layout}
    ignored = family.ignored_keys
    missing = sorted(expected - set(tensors))
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    unexpected = sorted(set(tensors) - expected - ignored)
    if unexpected:
        raise CheckpointError(
            f"checkpoint has {len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}"
        )
    params: dict = {"blocks": [{} for _ in range(cfg.n_layer)]}
    for key, path, shape in layout:
        arr = tensors[key]
        if tuple(arr.shape) != shape:
            raise CheckpointError(
                f"shape mismatch for {key!r}: checkpoint {tuple(arr.shape)}, expected {shape}"
            )
        if not np.isfinite(arr).all():
            raise CheckpointError(f"tensor {key!r} has non-finite values (NaN or Inf)")
        if len(shape) == 3:  # [1, 1, C] vectors are [C] here, [D, 1, K] convolutions [D, K]
            arr = arr.reshape([d for d in shape if d != 1])
        _set_path(params, path, jnp.asarray(arr, dtype=dtype))
    return params


def load_rwkv(path: str | Path, dtype=jnp.float32) -> tuple[RWKVConfig, dict]:
    """Loads an official RWKV-4, RWKV-7 or Mamba-2 checkpoint.

    Args:
      path: a BlinkDL ``.pth`` file or a ``.safetensors`` file with the same
        keys; for Mamba-2, a ``transformers`` ``Mamba2ForCausalLM`` or a
        ``mamba_ssm`` state dict (``.safetensors`` or ``.pth``).
      dtype: ``jnp.float32`` or ``jnp.bfloat16``; used for the parameters and as
        the model's compute dtype (``cfg.dtype``). State stays float32.

    Returns:
      ``(cfg, params)`` ready for :func:`prosg_jax.forward`.

    Raises:
      FileNotFoundError: no file at ``path``.
      CheckpointError: unreadable file, unknown layout, missing/unexpected keys,
        shape mismatch or non-finite weights.
    """
    name = _dtype_name(dtype)
    raw, meta = read_checkpoint(path)
    family, tensors = _canonical_tensors(raw)
    cfg = config_from_tensors(tensors, name, meta, family=family)
    return cfg, params_from_tensors(cfg, tensors, dtype=jnp.dtype(name))


def save_rwkv(path: str | Path, cfg: RWKVConfig, params: dict) -> Path:
    """Writes ``params`` in the official key layout, atomically.

    ``.safetensors`` needs only the base install; ``.pth`` needs torch. The
    file appears under its final name only once fully written, so a crash
    never leaves a truncated checkpoint behind.
    """
    path = Path(path)
    check_params(cfg, params)  # another depth or version would write a wrong file
    if not all_finite(params):
        raise CheckpointError(f"not writing {path}: the params hold NaN or infinite values")
    tensors = {}
    for key, tree_path, shape in official_layout(cfg):
        leaf = params
        for part in tree_path:
            leaf = leaf[part]
        tensors[key] = np.array(leaf, np.float32).reshape(shape)  # a writable copy
    shape = {f: getattr(cfg, f) for f in model_family(cfg).shape_fields}
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        meta = {META_KEY: json.dumps(shape, sort_keys=True)}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    elif path.suffix == ".pth":
        if cfg.n_groups != 1:  # a .pth holds tensors only, and shapes cannot tell G
            raise CheckpointError(
                f"not writing {path}: n_groups={cfg.n_groups} is not recoverable from a .pth; "
                "write .safetensors (its header records it)"
            )
        try:
            import torch
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise CheckpointError("writing .pth needs torch: pip install 'prosg_jax[torch]'") from e
        state = {k: torch.from_numpy(v) for k, v in tensors.items()}
        return atomic_write(path, lambda tmp: torch.save(state, tmp))
    raise _unsupported_format(path)


def save_state(path: str | Path, cfg: RWKVConfig, state) -> Path:
    """Writes one example's recurrent state for other RWKV runtimes, atomically.

    The file is safetensors with tensors ``state.0``, ``state.1``, … in the
    reference ``rwkv`` package's order (per layer, the family's state fields
    in order) and shapes (no batch axis), so with that package
    ``[torch.from_numpy(f[f"state.{j}"]) for j in range(len(f))]`` is the
    ``state`` argument of ``model.forward``.

    Raises:
      ValueError: ``state`` does not fit ``cfg`` or holds more than one example.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"a state is written as .safetensors, got {path.name}")
    check_state(cfg, state, 1)
    leaves = [np.array(x, np.float32)[0] for layer in state for x in layer]
    tensors = {f"state.{j}": x for j, x in enumerate(leaves)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
