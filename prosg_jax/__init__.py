"""prosg_jax: Prompt Synthetic Gradients for recurrent language models in JAX.

Public API (everything else is internal and may change):

- models: :func:`forward`, :func:`step`, :func:`init_state`, :func:`init_params`,
  :func:`target_names`, :class:`RWKVConfig`;
- checkpoints: :func:`load_rwkv`, :func:`save_rwkv`, :func:`save_state`,
  :class:`CheckpointError`;
- low-rank deltas: :class:`LowRankDelta`;
- generation (one path for every ProSG method): :func:`generate` →
  :class:`Generation`, the streaming pair :func:`prefill` /
  :func:`decode_chunk` over a :class:`SamplingState`, and teacher-forced
  completion :func:`complete` (text) / :func:`complete_ids` (ids) of a
  :class:`Run` or a ``(model_cfg, params, tokenizer)`` triple;
- tokenizers: :func:`get_tokenizer` (``"byte"``, ``"world"``);
- trained runs: :func:`load_run` (a ``train.py`` workdir) → :class:`Run`;
- sessions: :class:`Session` (multi-turn memory, save/load) and :func:`bake`
  (a prompt folded into the weights) → :class:`Baked`.

Prompts are right-padded ``int32[B, P]`` with ``prompt_lengths int32[B]``, or
a ragged list of id lists, everywhere. ProSG itself lives in
:mod:`prosg_jax.prosg` (with :class:`ProSGConfig`); datasets and the input
pipeline in :mod:`prosg_jax.data`.
"""

from prosg_jax.checkpoint import CheckpointError, load_rwkv, save_rwkv, save_state
from prosg_jax.config import ProSGConfig, RWKVConfig
from prosg_jax.data.tokenizers import get_tokenizer
from prosg_jax.decode import SamplingState
from prosg_jax.lowrank import LowRankDelta
from prosg_jax.models import forward, init_params, init_state, step, target_names
from prosg_jax.run import Run, complete, complete_ids, load_run
from prosg_jax.sampling import Generation, decode_chunk, generate, prefill
from prosg_jax.session import Baked, Session, bake

__all__ = [
    "CheckpointError",
    "Generation",
    "LowRankDelta",
    "ProSGConfig",
    "Baked",
    "RWKVConfig",
    "Run",
    "SamplingState",
    "Session",
    "bake",
    "complete",
    "complete_ids",
    "decode_chunk",
    "forward",
    "generate",
    "get_tokenizer",
    "init_params",
    "init_state",
    "load_run",
    "load_rwkv",
    "prefill",
    "save_rwkv",
    "save_state",
    "step",
    "target_names",
]
