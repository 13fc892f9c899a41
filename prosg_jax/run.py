"""A trained run in memory: what :func:`prosg_jax.load_run` returns.

Kept in a module of its own so that the generation API's ``Run`` can replace
it without touching the code that builds one.
"""

from __future__ import annotations

import dataclasses

from prosg_jax.config import ProSGConfig, RWKVConfig
from prosg_jax.data.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class Run:
    """A base model, its SG module and tokenizer.

    Attributes:
      model_cfg: the base model's config.
      params: the base model's parameters.
      prosg_cfg: the run's ProSG config (``method`` is the run's own method).
      sg_params: the SG module's parameters, or None when none was trained.
      tokenizer: the tokenizer the run was trained with.
    """

    model_cfg: RWKVConfig
    params: dict
    prosg_cfg: ProSGConfig
    sg_params: dict | None
    tokenizer: Tokenizer
