"""prosg_jax: Prompt Synthetic Gradients for recurrent language models in JAX.

Public API (everything else is internal and may change):

- models: :func:`forward`, :func:`step`, :func:`init_state`, :func:`init_params`,
  :func:`target_names`, :class:`RWKVConfig`;
- checkpoints: :func:`load_rwkv`, :func:`save_rwkv`, :class:`CheckpointError`;
- low-rank deltas: :class:`LowRankDelta`;
- generation: :func:`generate`, :func:`left_pad`.
"""

from prosg_jax.checkpoint import CheckpointError, load_rwkv, save_rwkv
from prosg_jax.config import RWKVConfig
from prosg_jax.lowrank import LowRankDelta
from prosg_jax.models import forward, init_params, init_state, step, target_names
from prosg_jax.sampling import generate, left_pad

__all__ = [
    "CheckpointError",
    "LowRankDelta",
    "RWKVConfig",
    "forward",
    "generate",
    "init_params",
    "init_state",
    "left_pad",
    "load_rwkv",
    "save_rwkv",
    "step",
    "target_names",
]
