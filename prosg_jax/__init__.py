"""prosg_jax: Prompt Synthetic Gradients for recurrent language models in JAX.

Public API (everything else is internal and may change):

- models: :func:`forward`, :func:`step`, :func:`init_state`, :func:`init_params`,
  :func:`target_names`, :class:`RWKVConfig`;
- checkpoints: :func:`load_rwkv`, :func:`save_rwkv`, :class:`CheckpointError`;
- low-rank deltas: :class:`LowRankDelta`;
- generation: :func:`generate`, :func:`left_pad`;
- tokenizers: :func:`get_tokenizer` (``"byte"``, ``"world"``);
- trained runs: :func:`load_run` (a ``train.py`` workdir) → :class:`Run`.

ProSG itself lives in :mod:`prosg_jax.prosg` (with :class:`ProSGConfig`);
datasets and the input pipeline in :mod:`prosg_jax.data`.
"""

from prosg_jax.checkpoint import CheckpointError, load_rwkv, save_rwkv
from prosg_jax.config import ProSGConfig, RWKVConfig
from prosg_jax.data.tokenizers import get_tokenizer
from prosg_jax.export import load_run
from prosg_jax.lowrank import LowRankDelta
from prosg_jax.models import forward, init_params, init_state, step, target_names
from prosg_jax.run import Run
from prosg_jax.sampling import generate, left_pad

__all__ = [
    "CheckpointError",
    "LowRankDelta",
    "ProSGConfig",
    "RWKVConfig",
    "Run",
    "forward",
    "generate",
    "get_tokenizer",
    "init_params",
    "init_state",
    "left_pad",
    "load_run",
    "load_rwkv",
    "save_rwkv",
    "step",
    "target_names",
]
