"""Sessions: a conversation's recurrent state and the memory of its turns.

A :class:`Session` is a pytree built from a :class:`~prosg_jax.Run`. Each
:meth:`Session.feed` reads one turn; with ``remember=True`` the turn also
becomes low-rank deltas (the run's ProSG method, the turn read as a prompt
from a fresh state) that are added to the earlier turns' and stay in force for
everything after it. The sum is kept at rank at most ``max_rank``
(:func:`prosg_jax.lowrank.add`): exact while the turns' ranks fit, its best
rank-``max_rank`` approximation after that. :meth:`Session.generate`
continues through the one jitted decode loop; :meth:`Session.save` and
:meth:`Session.load` round-trip a session bit for bit.

A turn is read the way a prompt is prefilled: its tokens up to the last under
the deltas already in force, then the last token again under the deltas with
this turn added, so the first token after a turn already sees its memory.

:func:`bake` folds one prompt's deltas into the weights (``W + ΔW``) and
returns them with the prompt's state, for any RWKV runtime to load
(:func:`prosg_jax.save_rwkv` and :func:`prosg_jax.save_state`).

Axis legend: ``B`` rows (independent conversations), ``L`` a turn's tokens,
``V`` vocab.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from prosg_jax import lowrank
from prosg_jax.config import ProSGConfig, RWKVConfig, method_config
from prosg_jax.decode import SamplingState, stop_matrix
from prosg_jax.files import atomic_write
from prosg_jax.models.layers import Deltas
from prosg_jax.models.lm import State, forward_core, init_state
from prosg_jax.prosg.ablations import derive_compiled
from prosg_jax.prosg.states import is_ragged, right_padded
from prosg_jax.run import Run
from prosg_jax.sampling import Generation, bucket, decode_chunk, prefill

_FORMAT = "prosg_jax.session/1"


@functools.partial(jax.jit, static_argnames=("model_cfg",))
def _read(model_cfg, params, state, deltas, *, tokens, positions):
    """Logits after the last of ``tokens [B, n]`` and the state after it."""
    logits, state, _ = forward_core(
        model_cfg, params, tokens, state, deltas=deltas, positions=positions
    )
    return logits[:, -1], state


@flax.struct.dataclass
class Session:
    """One or more conversations (rows) with a run: state, memory and position.

    Attributes:
      state: the recurrent state after every token read or generated so far.
      last_logits: ``[B, V]`` logits for each row's next token.
      positions: ``[B]`` tokens read or generated so far per row.
      deltas: the remembered turns' deltas, one :class:`LowRankDelta` per
        target at rank at most ``max_rank``; ``None`` before the first.
      key: PRNG key of the next sampled generation.
      turns: ``[]`` turns remembered so far.
      run: the model, its ProSG config and SG module (not saved).
      max_rank: the rank budget of the merged deltas.
    """

    state: State
    last_logits: Float[Array, "B V"]
    positions: Int[Array, " B"]
    deltas: Deltas | None
    key: Array
    turns: Int[Array, ""]
    run: Run = flax.struct.field(pytree_node=False)
    max_rank: int = flax.struct.field(pytree_node=False)

    @classmethod
    def start(
        cls, run: Run, batch: int = 1, *, max_rank: int | None = None, key: Array | None = None
    ) -> Session:
        """An empty session of ``batch`` rows.

        Args:
          run: the model and its ProSG method (``none``, ``prosg`` or
            ``true_grad``; ``repeat_prompt`` has no session form).
          batch: independent conversations fed and generated together.
          max_rank: the merged deltas' rank budget (default: four turns'
            worth, ``4 * prosg_cfg.rank``).
          key: PRNG key for sampled generations (default ``jax.random.key(0)``).
        """
        if not isinstance(run, Run):
            raise TypeError(f"Session.start takes a prosg_jax.Run, got {type(run).__name__}")
        pc = _session_config(run)
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        max_rank = 4 * pc.rank if max_rank is None else max_rank
        if not isinstance(max_rank, int) or isinstance(max_rank, bool) or max_rank < pc.rank:
            raise ValueError(
                f"max_rank must be an int >= the ProSG rank {pc.rank}, got {max_rank!r}"
            )
        cfg = run.model_cfg
        return cls(
            state=init_state(cfg, batch),
            last_logits=jnp.zeros((batch, cfg.vocab_size), jnp.float32),
            positions=jnp.zeros((batch,), jnp.int32),
            deltas=None,
            key=jax.random.key(0) if key is None else key,
            turns=jnp.zeros((), jnp.int32),
            run=run,
            max_rank=max_rank,
        )

    @property
    def batch(self) -> int:
        """Rows (conversations) of the session."""
        return self.positions.shape[0]

    def feed(self, turn, *, remember: bool = True) -> Session:
        """Reads one turn into every row and returns the advanced session.

        Args:
          turn: text (one row), a list of texts or of id lists (one per row),
            or an ``int32[B, L]`` array. Rows of one turn have equal lengths
            (a batched session reads them in one pass, and a pad would be read
            into the state); feed rows of other lengths as separate sessions.
          remember: also derive the turn's deltas and add them to the memory
            (with method ``none`` there is none to add).
        """
        tokens = self._turn_ids(turn)
        pc = _session_config(self.run)
        remember = remember and pc.method != "none"
        cfg, params = self.run.model_cfg, self.run.params
        n = tokens.shape[1]
        deltas = self.deltas
        head = n - 1 if remember else n
        logits, state = self._read_ids(tokens[:, :head], deltas)
        turns = self.turns
        if remember:
            width = bucket(n)
            padded = np.pad(tokens, ((0, 0), (0, width - n)))
            new, _ = derive_compiled(
                cfg,
                params,
                self.run.sg_params if pc.method == "prosg" else None,
                pc,
                prompts=jnp.asarray(padded),
                prompt_lengths=jnp.full((self.batch,), n, jnp.int32),
            )
            deltas = {
                name: lowrank.add(
                    None if self.deltas is None else self.deltas[name],
                    d,
                    max_rank=self.max_rank,
                )
                for name, d in new.items()
            }
            positions = (self.positions + head)[:, None]
            logits, state = _read(
                cfg,
                params,
                state,
                deltas,
                tokens=jnp.asarray(tokens[:, head:]),
                positions=positions,
            )
            turns = turns + 1
        return self.replace(
            state=state,
            last_logits=logits,
            positions=self.positions + n,
            deltas=deltas,
            turns=turns,
        )

    def generate(
        self,
        max_new_tokens: int,
        *,
        stop_tokens=None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> tuple[Generation, Session]:
        """Continues every row by up to ``max_new_tokens`` tokens.

        The generated tokens are read into the state (not into the memory), so
        the next turn follows them. ``stop_tokens``, ``temperature``,
        ``top_k`` and ``top_p`` are :func:`prosg_jax.generate`'s.

        Returns:
          ``(generation, the advanced session)``.
        """
        if not bool(jnp.all(self.positions > 0)):
            raise ValueError("feed a turn before generating: the session has read nothing")
        key, sub = jax.random.split(self.key)
        # The decode loop donates its state: hand it copies, so this session stays usable.
        sampling = SamplingState(
            last_logits=jnp.copy(self.last_logits),
            state=jax.tree.map(jnp.copy, self.state),
            done=jnp.zeros((self.batch,), bool),
            lengths=jnp.zeros((self.batch,), jnp.int32),
            stop_ids=jnp.asarray(stop_matrix(self.run.model_cfg, stop_tokens, self.batch)),
            key=sub,
        )
        tokens, sampling = decode_chunk(
            self.run.model_cfg,
            self.run.params,
            sampling,
            self.deltas,
            n=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
        generation = Generation(tokens=tokens, lengths=sampling.lengths, stopped=sampling.done)
        advanced = self.replace(
            state=sampling.state,
            last_logits=sampling.last_logits,
            positions=self.positions + sampling.lengths,
            key=key,
        )
        return generation, advanced

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the session (not its run) as one safetensors file, atomically.

        The arrays are stored exactly; the metadata (JSON) names the model and
        ProSG config it was made with, which :meth:`load` checks.
        """
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {
            "last_logits": np.asarray(self.last_logits),
            "positions": np.asarray(self.positions),
            "key": np.asarray(jax.random.key_data(self.key)),
            "turns": np.asarray(self.turns),
        }
        for i, layer in enumerate(self.state):
            for field, value in zip(layer._fields, layer, strict=True):
                tensors[f"state.{i}.{field}"] = np.asarray(value)
        for name, d in (self.deltas or {}).items():
            for part in ("u", "v", "scale"):
                tensors[f"deltas.{name}.{part}"] = np.asarray(getattr(d, part))
        meta = {
            "format": _FORMAT,
            "model": json.dumps(dataclasses.asdict(self.run.model_cfg)),
            "prosg": json.dumps(dataclasses.asdict(_session_config(self.run))),
            "max_rank": str(self.max_rank),
        }
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike, run: Run) -> Session:
        """The session saved at ``path``, continuing with ``run``.

        Raises:
          ValueError: the file is not a session, or was made with another
            model shape or ProSG config than ``run``'s.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except (OSError, ValueError, SafetensorError) as e:
            raise ValueError(f"cannot read session file {path}: {e}") from e
        if meta.get("format") != _FORMAT or not {"model", "prosg", "max_rank"} <= set(meta):
            raise ValueError(f"{path} is not a prosg_jax session file")
        if RWKVConfig.from_dict(json.loads(meta["model"])) != run.model_cfg:
            raise ValueError(f"{path} was saved with another model than this run's")
        if ProSGConfig.from_dict(json.loads(meta["prosg"])) != _session_config(run):
            raise ValueError(f"{path} was saved with another ProSG config than this run's")
        batch = tensors["positions"].shape[0]
        template = init_state(run.model_cfg, batch)
        state = tuple(
            type(layer)(*(jnp.asarray(tensors[f"state.{i}.{f}"]) for f in layer._fields))
            for i, layer in enumerate(template)
        )
        names = sorted(
            {k.split(".", 1)[1].rsplit(".", 1)[0] for k in tensors if k.startswith("deltas.")}
        )
        deltas = {
            n: lowrank.LowRankDelta(
                *(jnp.asarray(tensors[f"deltas.{n}.{p}"]) for p in ("u", "v", "scale"))
            )
            for n in names
        }
        return cls(
            state=state,
            last_logits=jnp.asarray(tensors["last_logits"]),
            positions=jnp.asarray(tensors["positions"]),
            deltas=deltas or None,
            key=jax.random.wrap_key_data(jnp.asarray(tensors["key"])),
            turns=jnp.asarray(tensors["turns"]),
            run=run,
            max_rank=int(meta["max_rank"]),
        )

    def _turn_ids(self, turn) -> np.ndarray:
        """``int32[B, L]`` ids of a turn in any accepted form (checked)."""
        tok = self.run.tokenizer
        if isinstance(turn, str):
            turn = [turn]
        if isinstance(turn, list | tuple) and turn and all(isinstance(t, str) for t in turn):
            turn = [tok.encode(t) for t in turn]
        if is_ragged(turn):
            ids, lengths = right_padded(self.run.model_cfg, list(turn), what="turn")
        else:
            ids = np.asarray(turn)
            if ids.ndim != 2:
                raise ValueError(
                    f"a turn must be text, id lists or an int [B, L] array, got shape {ids.shape}"
                )
            lengths = np.full((ids.shape[0],), ids.shape[1], np.int32)
            ids, lengths = right_padded(
                self.run.model_cfg, ids, lengths, what="turn", lengths_name="turn lengths"
            )
        if len(set(lengths.tolist())) > 1:
            # One position per session row: rows of a turn advance together.
            raise ValueError(
                f"the rows of a turn must have equal lengths, got {sorted(set(lengths.tolist()))}: "
                "feed rows of other lengths as separate sessions"
            )
        if ids.shape[0] != self.batch:
            raise ValueError(f"a turn must have {self.batch} row(s), got {ids.shape[0]}")
        return ids

    def _read_ids(self, tokens: np.ndarray, deltas: Deltas | None):
        """Reads ``tokens`` from this session's state in pieces of power-of-two
        widths (the binary digits of their count), so every turn length reuses
        a few compiled programs. Returns ``(last logits, state)``."""
        logits, state = self.last_logits, self.state
        start = 0
        for width in _binary_pieces(tokens.shape[1]):
            piece = jnp.asarray(tokens[:, start : start + width])
            positions = self.positions[:, None] + start + jnp.arange(width, dtype=jnp.int32)
            logits, state = _read(
                self.run.model_cfg,
                self.run.params,
                state,
                deltas,
                tokens=piece,
                positions=positions,
            )
            start += width
        return logits, state


def _binary_pieces(n: int) -> list[int]:
    """``n`` as a sum of distinct powers of two, largest first (``13 → [8, 4, 1]``)."""
    return [1 << b for b in range(n.bit_length() - 1, -1, -1) if n >> b & 1]


def _session_config(run: Run) -> ProSGConfig:
    pc = method_config(run.prosg_cfg, None)
    if pc.method == "repeat_prompt":
        raise ValueError("repeat_prompt has no session form: feed the prompt twice instead")
    if pc.method == "prosg" and run.sg_params is None:
        raise ValueError("a prosg session needs the run's SG module (Run.sg_params)")
    return pc


class Baked(NamedTuple):
    """One prompt folded into a model: load ``params`` with ``state`` and go on.

    Attributes:
      params: the run's parameters with the prompt's ``ΔW`` added to every
        target matrix (official layout via :func:`prosg_jax.save_rwkv`).
      state: the state after the prompt, its last token read under the deltas
        (batch 1; :func:`prosg_jax.save_state` writes it for other runtimes).
      logits: ``[V]`` logits for the first token after the prompt.
    """

    params: dict
    state: State
    logits: Float[Array, " V"]


def bake(run: Run, prompt) -> Baked:
    """Folds ``prompt`` (text or ids) into ``run``'s weights with its method's deltas.

    Feeding the continuation to the baked model from ``state`` computes the
    same logits as generating after ``prompt`` with the deltas (to float32
    rounding: ``W + ΔW`` is summed once instead of per token).
    """
    if not isinstance(run, Run):
        raise TypeError(f"bake takes a prosg_jax.Run, got {type(run).__name__}")
    pc = _session_config(run)
    ids = run.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
    sampling, deltas = prefill(
        run.model_cfg,
        run.params,
        [list(np.asarray(ids).tolist())],
        prosg_cfg=pc,
        sg_params=run.sg_params if pc.method == "prosg" else None,
    )
    params = run.params if deltas is None else lowrank.merge(run.params, deltas, 0)
    return Baked(params=params, state=sampling.state, logits=sampling.last_logits[0])
