"""A trained run: :class:`Run`, what ``train.py`` leaves in its workdir,
:func:`load_run`, and text completion with a run.

``train.py`` writes, next to its orbax checkpoints, at every checkpoint:

* ``base.safetensors`` — the base model in BlinkDL's official layout
  (:func:`prosg_jax.save_rwkv`), readable by :func:`prosg_jax.load_rwkv` and,
  converted to ``.pth``, by the reference ``rwkv`` package;
* ``prosg.safetensors`` — the SG module, one tensor per leaf under
  ``"<target>/<leaf path>"`` (e.g. ``"blocks.0.att.value/ln/weight"``);
* ``run.json`` — the model and ProSG configs, the tokenizer, the stages done
  and the environment that wrote it (:func:`prosg_jax.provenance.environment`).

All three are written atomically (temporary file, then rename).
:func:`complete` and :func:`complete_ids` read a prompt into deltas and a
context under them, then generate greedily (:func:`prosg_jax.generate`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from prosg_jax.checkpoint import load_rwkv
from prosg_jax.config import ProSGConfig, RWKVConfig, method_config
from prosg_jax.data.tokenizers import Tokenizer, get_tokenizer
from prosg_jax.errors import UserError
from prosg_jax.files import atomic_write, write_text
from prosg_jax.models.lm import all_finite, check_model_config, check_params
from prosg_jax.prosg.sg import check_sg_params
from prosg_jax.prosg.states import is_ragged
from prosg_jax.sampling import generate


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """A trained (or plain) model with everything needed to generate text.

    Attributes:
      model_cfg: the base model's config.
      params: the base model's parameters.
      prosg_cfg: how prompts become deltas (``None``: the plain model).
      sg_params: SG-module parameters (``method="prosg"`` only).
      tokenizer: text ↔ ids (``prosg_jax.get_tokenizer``).
    """

    model_cfg: RWKVConfig
    params: dict
    prosg_cfg: ProSGConfig | None
    sg_params: dict | None
    tokenizer: Tokenizer

    def __post_init__(self):
        """Checks every field once, so a bad one fails here and not mid-generation.

        ``tokenizer`` may also be a name (``"byte"``, ``"world"``).
        """
        check_model_config(self.model_cfg)
        check_params(self.model_cfg, self.params)
        if self.prosg_cfg is not None and not isinstance(self.prosg_cfg, ProSGConfig):
            raise TypeError(
                f"Run.prosg_cfg must be a ProSGConfig or None, got {type(self.prosg_cfg).__name__}"
            )
        if isinstance(self.tokenizer, str):
            object.__setattr__(self, "tokenizer", get_tokenizer(self.tokenizer))
        if not all(hasattr(self.tokenizer, a) for a in ("encode", "decode", "vocab_size")):
            raise TypeError(
                "Run.tokenizer must be a tokenizer (prosg_jax.get_tokenizer) or its name, got "
                f"{type(self.tokenizer).__name__}"
            )
        if self.tokenizer.vocab_size > self.model_cfg.vocab_size:
            raise ValueError(
                f"Run.tokenizer has {self.tokenizer.vocab_size} ids, the model's vocabulary "
                f"{self.model_cfg.vocab_size}"
            )
        if self.sg_params is not None:
            pc = (self.prosg_cfg or ProSGConfig()).replace(method="prosg")
            check_sg_params(self.model_cfg, pc, self.sg_params)
        for name in ("params", "sg_params"):
            tree = getattr(self, name)
            if tree is not None and not all_finite(tree):
                raise ValueError(f"Run.{name} holds NaN or infinite values")


BASE_FILE = "base.safetensors"
SG_FILE = "prosg.safetensors"
RUN_FILE = "run.json"


def check_workdir(workdir: str | os.PathLike) -> Path:
    """Creates ``workdir`` and checks that it is writable (one-line error otherwise)."""
    if not str(workdir).strip():  # Path("") is the current directory
        raise UserError("--workdir is empty: name the run's directory, e.g. --workdir=/tmp/run")
    path = Path(workdir).absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"workdir {path} is not writable: {e.strerror or e}") from e
    return path


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

    flat = _flatten(sg_params)
    return atomic_write(path, lambda tmp: save_file(flat, str(tmp)))


def load_sg_params(path: str | Path) -> dict:
    """Reads :func:`save_sg_params`' file (or a run directory's) into the nested float32 pytree."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if path.is_dir():
        path = path / SG_FILE
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
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def run_info(
    model_cfg: RWKVConfig,
    prosg_cfg: ProSGConfig,
    tokenizer: str,
    stages,
    *,
    init_from: str | None = None,
    sg_from: str | None = None,
    adapter: dict | None = None,
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
      sg_from: the SG params the run started from (``config.sg_from``), stored
        under ``"sg_from"`` when set; omitted when None or "".
      adapter: when the joint stage adapted a frozen base with a LoRA
        (``config.train.lora_rank``), its ``rank``, ``parameters`` and the
        base's ``base_parameters``, stored under ``"adapter"``; omitted when None.
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
    if sg_from:
        info["sg_from"] = sg_from
    if adapter is not None:
        info["adapter"] = adapter
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
        want = RWKVConfig.from_dict(info["model"])
        prosg_cfg = ProSGConfig.from_dict(info["prosg"])
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


def _model_parts(run_or_model, method, prosg_cfg, sg_params):
    """``(model_cfg, params, tokenizer, prosg_cfg, sg_params)`` of a Run or a model triple."""
    if isinstance(run_or_model, Run):
        if prosg_cfg is not None or sg_params is not None:
            raise ValueError(
                "a Run carries its own prosg_cfg and sg_params; pass method= to override its method"
            )
        r = run_or_model
        return r.model_cfg, r.params, r.tokenizer, method_config(r.prosg_cfg, method), r.sg_params
    if (
        isinstance(run_or_model, tuple)
        and len(run_or_model) == 3
        and isinstance(run_or_model[0], RWKVConfig)
    ):
        if sg_params is not None and prosg_cfg is None and method is None:
            raise ValueError("sg_params given without a ProSG method: pass method='prosg'")
        model_cfg, params, tokenizer = run_or_model
        return model_cfg, params, tokenizer, method_config(prosg_cfg, method), sg_params
    raise ValueError(
        "run_or_model must be a prosg_jax.Run or a (model_cfg, params, tokenizer) triple, "
        f"got {type(run_or_model).__name__}"
    )


def complete_ids(
    run_or_model,
    prompts: Sequence[Sequence[int]],
    contexts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    method: str | None = None,
    prosg_cfg: ProSGConfig | None = None,
    sg_params: dict | None = None,
    stop_tokens=None,
) -> list[list[int]]:
    """Greedy completion after prompt (deltas) and context (teacher forced), as ids.

    For each example the deltas come from ``prompt``; ``context`` (e.g. a
    distractor and a question) is then read with the deltas in force; then up
    to ``max_new_tokens`` tokens are generated greedily.

    Args:
      run_or_model: a :class:`Run`, or a ``(model_cfg, params, tokenizer)``
        triple (the tokenizer may be ``None`` here).
      prompts: one id list per example (non-empty).
      contexts: one id list per example (may be empty).
      max_new_tokens: at most this many generated ids per example.
      method: overrides the Run's (or ``prosg_cfg``'s) method; ``None`` keeps
        it (``"none"`` for a triple without ``prosg_cfg``).
      prosg_cfg, sg_params: for a triple only; a Run carries its own.
      stop_tokens: ids that end a completion (default: the tokenizer's eos).

    Returns:
      Each example's generated ids, without the stop token.
    """
    model_cfg, params, tokenizer, pc, sg = _model_parts(run_or_model, method, prosg_cfg, sg_params)
    for name, rows in (("prompts", prompts), ("contexts", contexts)):
        if not is_ragged(rows) or not rows:
            raise ValueError(f"{name} must be a non-empty list of id lists")
    if len(prompts) != len(contexts):
        raise ValueError(f"{len(prompts)} prompts but {len(contexts)} contexts")
    if stop_tokens is None:
        stop_tokens = () if tokenizer is None else (tokenizer.eos_id,)
    out = generate(
        model_cfg,
        params,
        list(prompts),
        max_new_tokens=max_new_tokens,
        prosg_cfg=pc,
        sg_params=sg,
        contexts=list(contexts),
        stop_tokens=stop_tokens,
    )
    tokens, lengths, stopped = (np.asarray(x) for x in out)
    return [tokens[b, : lengths[b] - int(stopped[b])].tolist() for b in range(len(prompts))]


def decode_text(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """Decodes generated ids; ids the tokenizer does not define become U+FFFD."""
    pieces, run = [], []
    for i in ids:
        if i < tokenizer.vocab_size:
            run.append(i)
            continue
        pieces += [tokenizer.decode(run, errors="replace"), "\ufffd"]
        run = []
    return "".join(pieces) + tokenizer.decode(run, errors="replace")


def complete(
    run_or_model,
    prompts: Sequence[str],
    contexts: Sequence[str],
    *,
    max_new_tokens: int,
    method: str | None = None,
    prosg_cfg: ProSGConfig | None = None,
    sg_params: dict | None = None,
    stop_at_newline: bool = True,
) -> list[str]:
    """Text in, text out: :func:`complete_ids` through the run's tokenizer.

    A completion ends at the tokenizer's eos and, with ``stop_at_newline``, at
    a newline; the stop token is not part of the returned text.

    Args:
      run_or_model: a :class:`Run` or a ``(model_cfg, params, tokenizer)`` triple.
      prompts: the text whose deltas act during the rest (one per example).
      contexts: text read after the prompt with the deltas in force (e.g. a
        distractor and a question); may be empty strings.
      max_new_tokens, method, prosg_cfg, sg_params: as in :func:`complete_ids`.
      stop_at_newline: also stop at ``"\\n"``.
    """
    model_cfg, params, tokenizer, pc, sg = _model_parts(run_or_model, method, prosg_cfg, sg_params)
    if tokenizer is None:
        raise ValueError("complete needs a tokenizer; use complete_ids for ids")
    for name, texts in (("prompts", prompts), ("contexts", contexts)):
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{name} must be a sequence of strings, one per example")
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} ids, the model only {model_cfg.vocab_size}"
        )
    stop = [tokenizer.eos_id]
    if stop_at_newline:
        newline = tokenizer.encode("\n")
        if len(newline) != 1:
            raise ValueError("stop_at_newline needs a tokenizer that encodes '\\n' as one id")
        stop.append(int(newline[0]))
    ids = complete_ids(
        (model_cfg, params, tokenizer),
        [tokenizer.encode(p) for p in prompts],
        [tokenizer.encode(c) for c in contexts],
        max_new_tokens=max_new_tokens,
        prosg_cfg=pc,
        sg_params=sg,
        stop_tokens=stop,
    )
    return [decode_text(tokenizer, i) for i in ids]
