"""Runs the reference ``rwkv`` package on a checkpoint; invoked as a subprocess.

The package picks RWKV-4 or RWKV-7 code at import time from ``RWKV_V7_ON``,
so each version needs a fresh interpreter.

Usage: python reference_runner.py VERSION CKPT.pth TOKENS.npy OUT.npz
Writes ``seq`` (parallel logits ``[B, T, V]``), ``step`` (token-by-token
logits) and ``state_<layer>_<k>`` (state after the sequence, batch-stacked).

Or: python reference_runner.py continue VERSION CKPT.pth STATE.safetensors TOKENS.npy OUT.npz
starts from the state file (``prosg_jax.save_state``) and writes ``seq``,
the logits ``[T, V]`` of the one row in TOKENS.npy.
"""

import os
import sys

import numpy as np


def _model(version: str, ckpt: str):
    os.environ["RWKV_JIT_ON"] = "1"
    os.environ["RWKV_CUDA_ON"] = "0"
    if version == "7":
        os.environ["RWKV_V7_ON"] = "1"
    import torch
    from rwkv.model import RWKV

    torch.set_num_threads(1)
    model_path = ckpt[: -len(".pth")] if version == "7" else ckpt
    return RWKV(
        model=model_path, strategy="cpu fp32", **({} if version == "7" else {"verbose": False})
    )


def continue_from(version: str, ckpt: str, state_path: str, tokens_path: str, out: str) -> None:
    model = _model(version, ckpt)
    import torch
    from safetensors.numpy import load_file

    saved = load_file(state_path)
    state = [torch.from_numpy(saved[f"state.{j}"]) for j in range(len(saved))]
    (row,) = np.load(tokens_path).tolist()
    logits, _ = model.forward(row, state, full_output=True)
    np.savez(out, seq=logits.float().numpy())


def main(version: str, ckpt: str, tokens_path: str, out: str) -> None:
    model = _model(version, ckpt)
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
    if sys.argv[1] == "continue":
        continue_from(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
