"""Random tiny checkpoints in BlinkDL's official key layout, written with torch.

The key names and shapes here are spelled out independently of
``prosg_jax``'s own layout tables, so loading them is a real test of the
loader. Values are random (not the training init) so that every parameter
influences the logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _tensors(rng, vocab, c, n_layer, block):
    """The tensors both versions share; ``block(t, prefix)`` adds one layer's own.

    Drawn in file order: embedding, then per layer its LayerNorms and its own
    tensors, then the output norm and head.
    """
    t = {"emb.weight": rng.normal(0, 1, (vocab, c))}
    for i in range(n_layer):
        p = f"blocks.{i}."
        for ln in ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2"):
            t[p + ln + ".weight"] = 1 + 0.1 * rng.normal(size=c)
            t[p + ln + ".bias"] = 0.1 * rng.normal(size=c)
        block(t, p)
    t["ln_out.weight"] = 1 + 0.1 * rng.normal(size=c)
    t["ln_out.bias"] = 0.1 * rng.normal(size=c)
    t["head.weight"] = rng.normal(0, 1 / np.sqrt(c), (vocab, c))
    return t


def _tensors_v4(rng, vocab, c, n_layer, ffn):
    vec = (1, 1, c)

    def block(t, p):
        t[p + "att.time_decay"] = rng.uniform(-3, 1.5, c)
        t[p + "att.time_first"] = rng.uniform(-1, 1, c)
        for m in "kvr":
            t[p + f"att.time_mix_{m}"] = rng.uniform(0, 1, vec)
        for m in ("key", "value", "receptance", "output"):
            t[p + f"att.{m}.weight"] = rng.normal(0, 1 / np.sqrt(c), (c, c))
        for m in "kr":
            t[p + f"ffn.time_mix_{m}"] = rng.uniform(0, 1, vec)
        t[p + "ffn.key.weight"] = rng.normal(0, 1 / np.sqrt(c), (ffn, c))
        t[p + "ffn.value.weight"] = rng.normal(0, 1 / np.sqrt(ffn), (c, ffn))
        t[p + "ffn.receptance.weight"] = rng.normal(0, 1 / np.sqrt(c), (c, c))

    return _tensors(rng, vocab, c, n_layer, block)


def _tensors_v7(rng, vocab, c, n_layer, ffn, head_size=64, lora=32):
    vec = (1, 1, c)
    h = c // head_size

    def block(t, p):
        for m in "rwkvag":
            t[p + f"att.x_{m}"] = rng.uniform(0, 1, vec)
        # Official files carry v0/v1/v2 in layer 0 too (unused there).
        for m in "wav":
            t[p + f"att.{m}0"] = rng.normal(0, 0.5, vec)
            t[p + f"att.{m}1"] = rng.normal(0, 0.1, (c, lora))
            t[p + f"att.{m}2"] = rng.normal(0, 0.1, (lora, c))
        t[p + "att.g1"] = rng.normal(0, 0.1, (c, lora))
        t[p + "att.g2"] = rng.normal(0, 0.3, (lora, c))
        t[p + "att.k_k"] = rng.uniform(0.5, 1.0, vec)
        t[p + "att.k_a"] = rng.uniform(0.8, 1.2, vec)
        t[p + "att.r_k"] = rng.normal(0, 0.3, (h, head_size))
        for m in ("receptance", "key", "value", "output"):
            t[p + f"att.{m}.weight"] = rng.normal(0, 1 / np.sqrt(c), (c, c))
        t[p + "att.ln_x.weight"] = 1 + 0.1 * rng.normal(size=c)
        t[p + "att.ln_x.bias"] = 0.1 * rng.normal(size=c)
        t[p + "ffn.x_k"] = rng.uniform(0, 1, vec)
        t[p + "ffn.key.weight"] = rng.normal(0, 1 / np.sqrt(c), (ffn, c))
        t[p + "ffn.value.weight"] = rng.normal(0, 1 / np.sqrt(ffn), (c, ffn))

    return _tensors(rng, vocab, c, n_layer, block)


def random_tensors(version: int, *, vocab=97, c=128, n_layer=2, ffn=256, seed=0):
    """A dict of float32 numpy arrays in the official RWKV-``version`` layout."""
    rng = np.random.default_rng(seed)
    make = {4: _tensors_v4, 7: _tensors_v7}[version]
    return {k: np.asarray(v, np.float32) for k, v in make(rng, vocab, c, n_layer, ffn).items()}


def write_pth(tensors, path: Path) -> Path:
    """Saves ``tensors`` as a BlinkDL-style ``.pth`` (a flat state dict)."""
    import torch

    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, path)
    return path
