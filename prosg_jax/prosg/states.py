"""Stage 1: the prompt pass, and the one padding convention.

Every public entry point takes prompts **right-padded**: ``int32[B, P]`` with
``prompt_lengths int32[B]``, row ``b`` holding its ids in columns
``[0, prompt_lengths[b])`` and 0 beyond (or, where documented, a ragged list
of id lists). Anything else is refused with one line — in particular a
left-padded row, whose ids sit beyond its length.

Internally rows are left-aligned so that every row's last column is its last
real token; the pads then sit in front at position 0, where the model's
reset-at-position-0 rule makes them invisible.

The prompt pass reads each prompt up to, not including, its last token with
the frozen base model: that state and token (:class:`PromptTail`) are where
reading resumes once the deltas are known, so the deltas act from the logits
that predict the first generated or scored token on. For ProSG the last token
is then read by the base model too, and the pass records, over the whole
prompt, every target's inputs ``x_t``, the residual stream ``h_t`` entering
its block and the final recurrent state ``S_P`` (:class:`PromptStates`).

Axis legend: ``B`` batch, ``P`` prompt length, ``Q`` second part's length,
``C`` d_model, ``I`` d_in.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from prosg_jax.config import RWKVConfig
from prosg_jax.models.lm import State, check_tokens, forward_core, init_state, is_concrete


class PromptTail(NamedTuple):
    """Where reading resumes after the prompts, once their deltas are known.

    Replaying ``token`` from ``state`` under the deltas gives the logits for the
    first token after each prompt, and the state after it, with the deltas in
    force.

    Attributes:
      state: the base model's recurrent state before each prompt's last token.
      token: ``[B]`` each prompt's last token.
      position: ``[B]`` its index in its prompt, ``length - 1``; 0 resets the
        state, so a one-token prompt is replayed from a fresh state.
    """

    state: State
    token: Int[Array, " B"]
    position: Int[Array, " B"]


class PromptStates(NamedTuple):
    """Everything ProSG reads from the base model's pass over the prompts.

    Attributes:
      inputs: target path → its inputs ``x_t`` ``[B, P, I]``.
      hidden: ``"blocks.i"`` → residual stream entering block i ``[B, P, C]``.
      mask: ``[B, P]`` true at real prompt tokens (left-aligned).
      positions: ``[B, P]`` each token's index within its prompt (pads: 0).
      state: the recurrent state after each whole prompt, ``S_P``.
      tail: where reading resumes (the state before each last token).
    """

    inputs: dict[str, Float[Array, "B P I"]]
    hidden: dict[str, Float[Array, "B P C"]]
    mask: Bool[Array, "B P"]
    positions: Int[Array, "B P"]
    state: State
    tail: PromptTail


# --------------------------------------------------------------------------- input checks


def is_ragged(rows) -> bool:
    """A list/tuple of id sequences (rather than one rectangular array)."""
    return isinstance(rows, list | tuple) and all(
        isinstance(r, list | tuple | np.ndarray) for r in rows
    )


def check_right_padded(
    cfg: RWKVConfig,
    rows,
    lengths,
    *,
    what: str = "prompts",
    lengths_name: str = "prompt_lengths",
    min_length: int = 1,
) -> None:
    """Raises ``ValueError`` unless ``rows``/``lengths`` follow the padding convention.

    Shapes and dtypes are always checked; values (ids in the vocabulary,
    lengths in ``[min_length, P]``, zeros beyond each length) when concrete,
    i.e. at the public boundary rather than under ``jit``.
    """
    check_tokens(cfg, rows, ndim=2, what=what)
    batch, width = np.shape(rows)
    if np.shape(lengths) != (batch,):
        raise ValueError(f"{lengths_name} must have shape ({batch},), got {np.shape(lengths)}")
    if not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
        raise ValueError(f"{lengths_name} must be integers, got dtype {jnp.result_type(lengths)}")
    if not (is_concrete(rows) and is_concrete(lengths)):
        return
    lens, ids = np.asarray(lengths), np.asarray(rows)
    short = np.flatnonzero(lens < min_length)
    if short.size:
        b = int(short[0])
        if min_length == 1 and lens[b] == 0:
            raise ValueError(f"{what}[{b}] is empty; every prompt needs >= 1 token")
        raise ValueError(f"{lengths_name}[{b}] = {int(lens[b])} is below {min_length}")
    if lens.max() > width:
        b = int(lens.argmax())
        raise ValueError(f"{lengths_name}[{b}] = {int(lens[b])} exceeds the width {width}")
    beyond = (np.arange(width)[None, :] >= lens[:, None]) & (ids != 0)
    if beyond.any():
        b, t = (int(i) for i in np.argwhere(beyond)[0])
        raise ValueError(
            f"{what}[{b}] has id {int(ids[b, t])} at column {t}, beyond its length "
            f"{int(lens[b])}: {what} must be right-padded with 0 (left-padded rows are refused)"
        )


def right_padded(
    cfg: RWKVConfig,
    rows,
    lengths=None,
    *,
    what: str = "prompts",
    lengths_name: str = "prompt_lengths",
    min_length: int = 1,
) -> tuple[Int[np.ndarray, "B P"], Int[np.ndarray, " B"]]:
    """Checked ``(int32[B, P] right-padded ids, int32[B] lengths)`` from either accepted form.

    Args:
      cfg: the model (its vocabulary bounds the ids).
      rows: a ragged list of id lists, or a right-padded ``[B, P]`` array.
      lengths: the row lengths; required with an array, refused with a list.
      what, lengths_name: argument names for error messages.
      min_length: the shortest allowed row (1 for prompts, 0 for contexts).
    """
    if is_ragged(rows):
        if not rows:
            raise ValueError(f"{what} must hold at least one row")
        if lengths is not None:
            raise ValueError(
                f"{lengths_name} must be None when {what} is a list of id lists (it is implied)"
            )
        seqs = []
        for i, r in enumerate(rows):
            a = np.asarray(r)
            if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
                raise ValueError(f"{what}[{i}] must be a 1-D sequence of int ids")
            seqs.append(a)
        lens = np.asarray([len(a) for a in seqs], np.int32)
        ids = np.zeros((len(seqs), max(1, int(lens.max()))), np.int64)
        for i, a in enumerate(seqs):
            ids[i, : len(a)] = a
    else:
        if isinstance(rows, list | tuple):
            raise ValueError(
                f"{what} must be a list of id lists (one per row) or a right-padded [B, P] array"
            )
        if lengths is None:
            raise ValueError(
                f"{lengths_name} is required when {what} is an array (right-padded [B, P]); "
                f"pass a list of id lists for ragged {what}"
            )
        ids, lens = np.asarray(rows), np.asarray(lengths)
    check_right_padded(cfg, ids, lens, what=what, lengths_name=lengths_name, min_length=min_length)
    return ids.astype(np.int32), lens.astype(np.int32)


# --------------------------------------------------------------------------- layouts


def left_align(
    rows: Int[Array, "B P"], lengths: Int[Array, " B"]
) -> tuple[Int[Array, "B P"], Int[Array, "B P"], Bool[Array, "B P"]]:
    """Right-padded rows → ``(left-aligned tokens, positions, mask)``; pads at position 0."""
    width = rows.shape[1]
    t = jnp.arange(width)[None, :]
    shift = width - lengths[:, None]  # pads in front of each row
    mask = t >= shift
    src = jnp.where(mask, t - shift, 0)
    tokens = jnp.where(mask, jnp.take_along_axis(rows, src, axis=1), 0)
    return tokens, src.astype(jnp.int32), mask


def join_rows(
    a: Int[Array, "B P"],
    a_lengths: Int[Array, " B"],
    b: Int[Array, "B Q"],
    b_lengths: Int[Array, " B"],
) -> tuple[Int[Array, "B P+Q"], Int[Array, " B"]]:
    """Right-padded ``a[:la] ++ b[:lb]`` per row (width ``P + Q``) and its lengths."""
    width_a, width_b = a.shape[1], b.shape[1]
    t = jnp.arange(width_a + width_b)[None, :]
    la, lb = a_lengths[:, None], b_lengths[:, None]
    from_a = jnp.take_along_axis(a, jnp.clip(t, 0, width_a - 1), axis=1)
    from_b = jnp.take_along_axis(b, jnp.clip(t - la, 0, width_b - 1), axis=1)
    joined = jnp.where(t < la, from_a, jnp.where(t < la + lb, from_b, 0))
    return joined, a_lengths + b_lengths


# --------------------------------------------------------------------------- the pass


def _read_all_but_last(
    cfg: RWKVConfig, params: dict, tokens, positions, *, lengths, capture: bool
) -> tuple[PromptTail, dict[str, Array]]:
    batch, width = tokens.shape
    state, taps = init_state(cfg, batch), {}
    if width > 1:
        _, state, taps = forward_core(
            cfg, params, tokens[:, :-1], state, positions=positions[:, :-1], capture=capture
        )
    return PromptTail(state=state, token=tokens[:, -1], position=lengths - 1), taps


def prompt_tail(
    cfg: RWKVConfig, params: dict, prompts: Int[Array, "B P"], prompt_lengths: Int[Array, " B"]
) -> PromptTail:
    """Reads each right-padded prompt but its last token with the base model (unchecked)."""
    lengths = jnp.asarray(prompt_lengths, jnp.int32)
    tokens, positions, _ = left_align(jnp.asarray(prompts, jnp.int32), lengths)
    return _read_all_but_last(cfg, params, tokens, positions, lengths=lengths, capture=False)[0]


def prompt_states(
    cfg: RWKVConfig,
    params: dict,
    prompts: Int[Array, "B P"],
    prompt_lengths: Int[Array, " B"],
    *,
    targets: tuple[str, ...],
) -> PromptStates:
    """One base-model pass over the right-padded prompts, keeping what ProSG reads.

    The pass is split before each prompt's last token (the split costs nothing
    and yields :attr:`PromptStates.tail`); the recorded inputs, hiddens and
    final state cover the whole prompt.
    """
    check_right_padded(cfg, prompts, prompt_lengths)
    lengths = jnp.asarray(prompt_lengths, jnp.int32)
    tokens, positions, mask = left_align(jnp.asarray(prompts, jnp.int32), lengths)
    tail, head = _read_all_but_last(cfg, params, tokens, positions, lengths=lengths, capture=True)
    _, final, last = forward_core(
        cfg, params, tail.token[:, None], tail.state, positions=tail.position[:, None], capture=True
    )
    taps = {k: jnp.concatenate([head[k], v], axis=1) if head else v for k, v in last.items()}
    layers = sorted({t.rsplit(".", 2)[0] for t in targets})
    return PromptStates(
        inputs={t: taps[t] for t in targets},
        hidden={b: taps[f"{b}.hidden"] for b in layers},
        mask=mask,
        positions=positions,
        state=final,
        tail=tail,
    )
