"""Deepens a trained RWKV checkpoint by appending freshly initialised blocks.

A fresh block is the identity at initialisation (BlinkDL's scheme zeroes the
attention output and FFN value matrices), so the grown model computes exactly
what the trained one did, and further training can use the new depth without
first relearning what the old blocks know.

Usage: python experiments/base_depth/grow_base.py IN.safetensors OUT.safetensors N_LAYER [SEED]
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import prosg_jax as pj  # noqa: E402


def grow(cfg: pj.RWKVConfig, params: dict, n_layer: int, seed: int = 0):
    """``(cfg, params)`` with ``n_layer`` blocks: the trained ones first, then fresh ones."""
    if n_layer < cfg.n_layer:
        raise ValueError(f"cannot grow {cfg.n_layer} blocks to {n_layer}")
    deeper = cfg.replace(n_layer=n_layer)
    fresh = pj.init_params(jax.random.key(seed), deeper)
    blocks = list(params["blocks"]) + fresh["blocks"][cfg.n_layer :]
    return deeper, {**params, "blocks": blocks}


def main() -> None:
    src, dst, n_layer = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg, params = pj.load_rwkv(src)
    deeper, grown = grow(cfg, params, n_layer, int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    tokens = jnp.arange(1, 33, dtype=jnp.int32)[None] % cfg.vocab_size
    before, _ = pj.forward(cfg, params, tokens)
    after, _ = pj.forward(deeper, grown, tokens)
    err = float(abs(after - before).max())
    if err > 1e-4:
        raise SystemExit(f"grown model differs from the trained one by {err:.2e}")
    pj.save_rwkv(dst, deeper, grown)
    print(f"{src} ({cfg.n_layer} blocks) -> {dst} ({n_layer} blocks); max logit change {err:.1e}")


if __name__ == "__main__":
    main()
