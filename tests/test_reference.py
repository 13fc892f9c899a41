"""Our RWKV-4/7 against the reference ``rwkv`` pip package on the same file.

The reference runs in a subprocess (``reference_runner.py``) because it picks
its RWKV-7 code path at import time from an environment variable.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from official_ckpt import random_tensors, write_pth

import prosg_jax as pj

pytest.importorskip("rwkv.model", reason="the torch extra provides the reference package")

TOL = 1e-4  # fp32 max-abs agreement required by the spec
RUNNER = os.path.join(os.path.dirname(__file__), "reference_runner.py")


@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 7])
def test_matches_reference_package(tmp_path, version):
    # RWKV-7 in the reference package requires head size 64.
    path = write_pth(
        random_tensors(version, vocab=97, c=128, ffn=256, n_layer=3, seed=5),
        tmp_path / f"rwkv{version}.pth",
    )
    tokens = np.random.default_rng(version).integers(0, 97, (2, 40)).astype(np.int64)
    np.save(tmp_path / "tokens.npy", tokens)
    out = tmp_path / "ref.npz"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RWKV_")}
    proc = subprocess.run(
        [sys.executable, RUNNER, str(version), str(path), str(tmp_path / "tokens.npy"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = np.load(out)

    assert np.abs(ref["seq"]).max() > 1.0  # a non-degenerate comparison
    loaded, params = pj.load_rwkv(path)
    s = pj.init_state(loaded, tokens.shape[0])
    outs = []
    for t in range(tokens.shape[1]):  # single steps run the same body whatever wkv_impl says
        lg, s = pj.step(loaded, params, jnp.asarray(tokens[:, t], jnp.int32), s)
        outs.append(lg)
    np.testing.assert_allclose(np.stack(outs, 1), ref["step"], atol=TOL, rtol=0)

    # One reference run checks every implementation of the recurrence.
    for impl in ("scan", "chunked", "auto"):
        cfg = loaded.replace(wkv_impl=impl)
        logits, state = pj.forward(cfg, params, jnp.asarray(tokens, jnp.int32))
        np.testing.assert_allclose(np.asarray(logits), ref["seq"], atol=TOL, rtol=0, err_msg=impl)
        np.testing.assert_allclose(np.asarray(logits), ref["step"], atol=TOL, rtol=0, err_msg=impl)
        ours = [np.asarray(x) for layer in state for x in layer]
        theirs = [ref[f"state_{j}"] for j in range(len(ours))]
        for j, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            np.testing.assert_allclose(
                a.reshape(b.shape), b, atol=TOL, rtol=0, err_msg=f"{impl}: state tensor {j}"
            )
        for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(state), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL, rtol=0)
