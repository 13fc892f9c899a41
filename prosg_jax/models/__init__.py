"""Recurrent language models as pure functions over parameter pytrees, one family per module."""

from prosg_jax.models.lm import (
    forward,
    init_params,
    init_state,
    model_family,
    step,
    target_names,
)

__all__ = ["forward", "init_params", "init_state", "model_family", "step", "target_names"]
