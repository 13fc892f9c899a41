"""Runs the reference ``rwkv`` package on a checkpoint; invoked as a subprocess.

The package picks RWKV-4 or RWKV-7 code at import time from ``RWKV_V7_ON``,
so each version needs a fresh interpreter.

Usage: python reference_runner.py VERSION CKPT.pth TOKENS.npy OUT.npz
Writes ``seq`` (parallel logits ``[B, T, V]``), ``step`` (token-by-token
logits) and ``state_<layer>_<k>`` (state after the sequence, batch-stacked).
"""

import os
import sys

import numpy as np


def main(version: str, ckpt: str, tokens_path: str, out: str) -> None:
    os.environ["RWKV_JIT_ON"] = "1"
    os.environ["RWKV_CUDA_ON"] = "0"
    if version == "7":
        os.environ["RWKV_V7_ON"] = "1"
    import torch
    from rwkv.model import RWKV

    torch.set_num_threads(1)
    model_path = ckpt[: -len(".pth")] if version == "7" else ckpt
    model = RWKV(
        model=model_path, strategy="cpu fp32", **({} if version == "7" else {"verbose": False})
    )
    tokens = np.load(tokens_path)
    seq, step, states = [], [], []
    for row in tokens.tolist():
        logits, state = model.forward(row, None, full_output=True)
        seq.append(logits.float().numpy())
        states.append([s.float().numpy().copy() for s in state])
        st, outs = None, []
        for tok in row:
            lg, st = model.forward([tok], st)
            st = [s.clone() for s in st]
            outs.append(lg.float().numpy())
        step.append(np.stack(outs))
    result = {"seq": np.stack(seq), "step": np.stack(step)}
    for j in range(len(states[0])):
        result[f"state_{j}"] = np.stack([s[j] for s in states])
    np.savez(out, **result)


if __name__ == "__main__":
    main(*sys.argv[1:])
