"""Evaluation entry points called by ``eval.py``."""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections

from prosg_jax.checkpoint import load_rwkv, save_rwkv
from prosg_jax.config import model_config_from_dict
from prosg_jax.data.tokenizers import get_tokenizer
from prosg_jax.models import init_params
from prosg_jax.sampling import decode_text, generate

CHECKPOINT_NAME = "model.safetensors"


def run_demo(config: ml_collections.ConfigDict, workdir: str | Path) -> str:
    """Loads ``workdir/model.safetensors`` and prints a generation from ``config.prompt``.

    When the workdir has no checkpoint yet, a freshly initialised model of
    ``config.model``'s shape is written there first (atomically), so the demo
    exercises the same load path a real checkpoint takes.

    Returns:
      The generated text.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / CHECKPOINT_NAME
    if not path.exists():
        cfg = model_config_from_dict(config.model)
        save_rwkv(path, cfg, init_params(jax.random.key(config.seed), cfg))
        print(f"wrote an untrained {cfg.n_layer}-layer RWKV-{cfg.version} to {path}")
    cfg, params = load_rwkv(path)
    # How the recurrence runs is a runtime choice the checkpoint does not hold.
    cfg = cfg.replace(wkv_impl=model_config_from_dict(config.model).wkv_impl)
    tokenizer = get_tokenizer(config.tokenizer)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(
            f"tokenizer {config.tokenizer!r} has {tokenizer.vocab_size} ids but the model only "
            f"{cfg.vocab_size}"
        )
    out = generate(
        cfg,
        params,
        [tokenizer.encode(config.prompt)],
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        key=jax.random.key(config.seed),
    )
    text = decode_text(tokenizer, [int(i) for i in out.tokens[0]])
    print(f"prompt: {config.prompt!r}")
    print(f"generated ({config.max_new_tokens} tokens): {text!r}")
    return text
