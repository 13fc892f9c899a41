"""RWKV-like language models as pure functions over parameter pytrees."""

from prosg_jax.models.lm import (
    forward,
    init_params,
    init_state,
    model_module,
    step,
    target_names,
)

__all__ = ["forward", "init_params", "init_state", "model_module", "step", "target_names"]
