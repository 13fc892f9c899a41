"""Family-independent language-model API: embedding -> blocks -> head.

``forward`` (parallel over ``[B, T]``) and ``step`` (one token) share the
same block code; ``step`` is ``forward`` on a length-1 block, whose recurrence
runs without a loop (``layers.scan_time``), so the two are numerically the
same computation.

Axis legend: ``B`` batch, ``T`` time, ``V`` vocab.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from prosg_jax.config import RWKVConfig
from prosg_jax.lowrank import LowRankDelta
from prosg_jax.models.family import Family, family_of, target_shape
from prosg_jax.models.layers import Deltas, TargetHooks, layer_norm

State = tuple  # tuple of per-layer ``LayerState`` NamedTuples


def model_family(cfg: RWKVConfig) -> Family:
    """The :class:`~prosg_jax.models.family.Family` that ``cfg.version`` names."""
    check_model_config(cfg)
    return family_of(cfg.version)


def init_params(key: Array, cfg: RWKVConfig) -> dict:
    """Freshly initialised float32 parameters (the family's scheme; BlinkDL's for RWKV)."""
    return model_family(cfg).init_params(key, cfg)


def init_state(cfg: RWKVConfig, batch_size: int) -> State:
    """The empty recurrent state for ``batch_size`` sequences (float32)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return model_family(cfg).init_state(cfg, batch_size)


def cast_for_compute(cfg: RWKVConfig, params: dict) -> dict:
    """``params`` with every matrix the model only multiplies in ``cfg.compute_dtype``
    (block projections, LoRAs, the head) cast to it; every other leaf as given.

    The forward casts these matrices anyway, so the result computes exactly the
    same logits. Doing it once, outside a decode loop, means each step reads
    bfloat16 weights instead of reading float32 masters and converting them.
    """
    dtype = cfg.compute_dtype
    block_matmuls = set(model_family(cfg).matmul_weights)

    def cast(path, leaf):
        keys = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path)
        if keys == ("head", "weight") or (keys[0] == "blocks" and keys[2:] in block_matmuls):
            return leaf.astype(dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(cast, params)


def target_names(cfg: RWKVConfig) -> tuple[str, ...]:
    """Every linear map that accepts a low-rank delta, e.g. ``"blocks.0.att.key"``."""
    targets = model_family(cfg).targets
    return tuple(f"blocks.{i}.{t}" for i in range(cfg.n_layer) for t in targets)


def is_concrete(x) -> bool:
    """Whether ``x`` has values here (not a tracer inside ``jit``/``grad``)."""
    return not isinstance(x, jax.core.Tracer)


def as_token_array(tokens, what: str = "tokens"):
    """Lets a rectangular list of id lists stand for an array; arrays pass through."""
    if not isinstance(tokens, list | tuple):
        return tokens
    try:
        arr = np.asarray(tokens)
    except ValueError:  # numpy refuses ragged nesting
        arr = None
    if arr is None or arr.dtype == object:
        raise ValueError(
            f"{what} must be a rectangular [B, T] array of ids; for ragged prompts use "
            "prosg_jax.generate with a list of id lists"
        )
    return arr


def check_tokens(cfg: RWKVConfig, tokens, ndim: int, what: str = "tokens") -> None:
    """Raises ``ValueError`` for a wrong rank/dtype or ids outside ``[0, V)``.

    The range check needs concrete values; under ``jit`` only shape and dtype
    can be checked (the caller validated the ids before tracing).
    """
    shape = np.shape(tokens)
    if len(shape) != ndim:
        want = "[B, T]" if ndim == 2 else "[B]"
        raise ValueError(f"{what} must have shape {want}, got {shape}")
    if 0 in shape:
        raise ValueError(f"{what} must not be empty, got shape {shape}")
    if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
        raise ValueError(f"{what} must be integer token ids, got dtype {jnp.result_type(tokens)}")
    if is_concrete(tokens):
        ids = np.asarray(tokens)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{what} contain id {bad}, outside the vocabulary [0, {cfg.vocab_size})"
            )


def check_positions(positions, shape: tuple[int, ...]) -> None:
    """Raises ``ValueError`` unless ``positions`` are non-negative ints of ``shape``."""
    if isinstance(positions, list | tuple):  # nested lists, as tokens may be given
        positions = np.asarray(positions)
    if np.shape(positions) != tuple(shape):
        raise ValueError(f"positions shape {np.shape(positions)} != tokens shape {tuple(shape)}")
    if not jnp.issubdtype(jnp.result_type(positions), jnp.integer):
        raise ValueError(
            f"positions must be integer indices, got dtype {jnp.result_type(positions)}"
        )
    if is_concrete(positions) and np.size(positions) and int(np.min(positions)) < 0:
        raise ValueError(f"positions must be >= 0, got {int(np.min(positions))}")


@functools.lru_cache(maxsize=16)
def _param_spec(cfg: RWKVConfig):
    """``(treedef, key paths, shapes)`` of the params ``cfg`` implies (no arrays built)."""
    shapes = jax.eval_shape(lambda: init_params(jax.random.key(0), cfg))
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    paths = tuple(jax.tree_util.keystr(p) for p, _ in flat)
    return treedef, paths, tuple(tuple(leaf.shape) for _, leaf in flat)


def check_params(cfg: RWKVConfig, params) -> None:
    """Raises ``ValueError`` unless ``params`` has exactly the layout ``cfg`` implies.

    Params of another vocabulary, width, depth or model family would otherwise
    give NaN logits or a bare ``KeyError`` deep inside the model. The expected
    layout is computed once per config.
    """
    check_model_config(cfg)
    treedef, paths, shapes = _param_spec(cfg)
    leaves, got = jax.tree_util.tree_flatten(params)
    if got != treedef:
        have = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
        missing = [p for p in paths if p not in have]
        unexpected = sorted(have - set(paths))
        raise ValueError(
            f"params do not match the {model_family(cfg).name} config ({cfg.n_layer} layers): "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for path, leaf, want in zip(paths, leaves, shapes, strict=True):
        if tuple(np.shape(leaf)) != want:
            raise ValueError(
                f"params{path} has shape {tuple(np.shape(leaf))}, the RWKVConfig expects {want} "
                f"(vocab_size={cfg.vocab_size}, d_model={cfg.d_model}, d_ffn={cfg.d_ffn})"
            )
        # The leaf's own dtype where it has one: decode checks params on every call,
        # and jnp.result_type costs several microseconds a leaf.
        dtype = leaf.dtype if hasattr(leaf, "dtype") else jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"params{path} has dtype {dtype}: parameters must be floats (float32 or bfloat16)"
            )


def all_finite(tree) -> bool:
    """Whether every leaf of ``tree`` is free of NaN and infinity (one reduction per leaf)."""
    return all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(tree))


def check_model_config(cfg) -> None:
    """Raises ``TypeError`` unless ``cfg`` is an :class:`RWKVConfig`."""
    if not isinstance(cfg, RWKVConfig):
        raise TypeError(
            f"the model config must be a prosg_jax.RWKVConfig (RWKVConfig.rwkv7(...), or the "
            f"one load_rwkv returns), got {type(cfg).__name__}"
        )


def check_deltas(cfg: RWKVConfig, deltas, batch: int) -> None:
    """Raises ``ValueError`` unless ``deltas`` maps target paths to fitting :class:`LowRankDelta`.

    Each ``u`` is ``[batch, d_out, r]`` and ``v`` ``[batch, d_in, r]`` of the
    target's ``(d_out, d_in)``, both with the same rank ``r``; ``scale`` is a
    scalar, ``[batch]`` or ``[batch, T]``.
    """
    if not isinstance(deltas, Mapping):
        raise ValueError(
            f"deltas must be a dict of target path -> LowRankDelta, got {deltas!r:.80}"
        )
    names = target_names(cfg)
    for name, d in deltas.items():
        if name not in names:
            raise ValueError(f"deltas name unknown target {name!r}; see target_names(cfg)")
        if not isinstance(d, LowRankDelta):
            raise ValueError(
                f"deltas[{name!r}] must be a LowRankDelta(u, v, scale), got {type(d).__name__}"
            )
        d_out, d_in = target_shape(cfg, name)
        u, v, scale = (np.shape(x) for x in d)
        if len(u) != 3 or len(v) != 3 or u[0] != batch or v[0] != batch or u[-1] != v[-1]:
            raise ValueError(
                f"deltas[{name!r}] has u {u} and v {v}: they must be [B, O, r] and [B, I, r] "
                f"with one rank r (B={batch}, O={d_out}, I={d_in})"
            )
        if (u[1], v[1]) != (d_out, d_in):
            raise ValueError(
                f"deltas[{name!r}] has u {u} and v {v}: the target is {d_out}x{d_in}, so they "
                f"must be [{batch}, {d_out}, r] and [{batch}, {d_in}, r]"
            )
        if len(scale) > 2 or (scale and scale[0] != batch):
            raise ValueError(
                f"deltas[{name!r}].scale has shape {scale}: a scalar, [B] or [B, T] (B={batch})"
            )


@functools.lru_cache(maxsize=64)
def _layer_state_spec(cfg: RWKVConfig, batch: int):
    """``(type, field names, shapes)`` of one layer's state; traced once per key."""
    ref = jax.eval_shape(lambda: model_family(cfg).init_layer_state(cfg, batch))
    return type(ref), ref._fields, tuple(tuple(x.shape) for x in ref)


def check_state(cfg: RWKVConfig, state: Sequence, batch: int) -> None:
    if not isinstance(state, Sequence) or len(state) != cfg.n_layer:
        n = len(state) if isinstance(state, Sequence) else type(state).__name__
        raise ValueError(f"state has {n} layers, the model has {cfg.n_layer}")
    kind, fields, shapes = _layer_state_spec(cfg, batch)
    for i, layer in enumerate(state):
        if type(layer) is not kind or len(layer) != len(fields):
            raise ValueError(f"state[{i}] is not an {model_family(cfg).name} LayerState")
        for field, got, exp in zip(fields, layer, shapes, strict=True):
            if tuple(np.shape(got)) != exp:
                raise ValueError(
                    f"state[{i}].{field} has shape {tuple(np.shape(got))}, expected "
                    f"{exp} (batch {batch})"
                )
            if jnp.result_type(got) != jnp.float32:  # the recurrence always runs in float32
                raise ValueError(
                    f"state[{i}].{field} has dtype {jnp.result_type(got)}; states are float32"
                )


def _ln0(cfg, params, x):
    # ln0 on the gathered rows equals the RWKV reference's ln0 folded into `emb`.
    del cfg
    return layer_norm(x, params["ln0"])


def _ln_out(cfg, params, x):
    del cfg
    return layer_norm(x, params["ln_out"])


def forward_core(
    cfg: RWKVConfig,
    params: dict,
    tokens: Int[Array, "B T"],
    state: State,
    *,
    deltas: Deltas | None = None,
    positions: Int[Array, "B T"] | None = None,
    capture: bool = False,
    perturb: dict[str, Float[Array, "B T O"]] | None = None,
) -> tuple[Float[Array, "B T V"], State, dict[str, Array]]:
    """The unchecked forward.

    Args:
      cfg, params, tokens, state: as in :func:`forward`.
      deltas: per-example low-rank deltas by target path.
      positions: index of each token in its sequence; the state resets at 0.
      capture: also return every target's input ``[B, T, d_in]`` (under its
        path, ``"blocks.i.att.key"``) and the residual stream entering block
        ``i`` (under ``"blocks.i.hidden"``), all from this single pass.
      perturb: zero-valued additive perturbations of target outputs; their
        gradient is the error at each target's output (see
        :class:`~prosg_jax.models.layers.TargetHooks`).

    Returns:
      ``(logits float32[B, T, V], state after the last token, captured dict)``.
    """
    family = model_family(cfg)
    x = jnp.take(params["emb"]["weight"], tokens, axis=0).astype(jnp.float32)
    x = (family.norm_in or _ln0)(cfg, params, x).astype(cfg.compute_dtype)
    reset = None if positions is None else positions == 0
    hooks = TargetHooks(deltas=deltas, perturb=perturb, taps={} if capture else None)
    new_state, v_first = [], None
    for i, (p, s) in enumerate(zip(params["blocks"], state, strict=True)):
        if hooks.taps is not None:  # the residual stream the SG module reads
            hooks.taps[f"blocks.{i}.hidden"] = x
        x, s, v_first = family.block(
            cfg, i, p, x, state=s, reset=reset, hooks=hooks, v_first=v_first
        )
        new_state.append(s)
    x = (family.norm_out or _ln_out)(cfg, params, x)
    # Accumulate and return the head in float32 even for bfloat16 activations:
    # rounding logits to bfloat16 would keep only ~3 significant digits.
    logits = jnp.einsum(
        "btc,vc->btv",
        x,
        params["head"]["weight"].astype(x.dtype),
        preferred_element_type=jnp.float32,
    )
    return logits, tuple(new_state), hooks.taps or {}


_forward_jit = jax.jit(forward_core, static_argnames=("cfg", "capture"))


def forward(
    cfg: RWKVConfig,
    params: dict,
    tokens: Int[Array, "B T"],
    state: State | None = None,
    *,
    deltas: Deltas | None = None,
    positions: Int[Array, "B T"] | None = None,
) -> tuple[Float[Array, "B T V"], State]:
    """Parallel forward over a block of tokens.

    Args:
      cfg: model config.
      params: parameter pytree (see ``rwkv4``/``rwkv7`` for the layout); it must
        match ``cfg`` exactly (vocabulary, widths, depth, family).
      tokens: ``int32[B, T]`` token ids in ``[0, V)`` (a rectangular list of
        lists is accepted).
      state: the state after the preceding tokens; ``None`` for a fresh start.
      deltas: optional per-example low-rank deltas keyed by target path
        (``target_names(cfg)``).
      positions: optional non-negative ``int32[B, T]`` index of each token
        within its sequence. The state resets before every token whose
        position is 0, so packed sequences never see each other and left
        padding (pads at position 0) leaves the real tokens untouched.

    Returns:
      ``(logits float32[B, T, V], state after the last token)``.
    """
    check_model_config(cfg)
    tokens = as_token_array(tokens)
    check_tokens(cfg, tokens, ndim=2)
    check_params(cfg, params)
    batch = np.shape(tokens)[0]
    if positions is not None:
        check_positions(positions, np.shape(tokens))
    if state is None:
        state = init_state(cfg, batch)
    else:
        check_state(cfg, state, batch)
    if deltas is not None:
        check_deltas(cfg, deltas, batch)
    logits, state, _ = _forward_jit(
        cfg,
        params,
        jnp.asarray(tokens, jnp.int32),
        state,
        deltas=deltas,
        positions=None if positions is None else jnp.asarray(positions, jnp.int32),
    )
    return logits, state


def step(
    cfg: RWKVConfig,
    params: dict,
    token: Int[Array, " B"],
    state: State,
    *,
    deltas: Deltas | None = None,
) -> tuple[Float[Array, "B V"], State]:
    """One generation step: logits for ``token`` and the advanced state."""
    check_model_config(cfg)
    token = as_token_array(token, "token")
    check_tokens(cfg, token, ndim=1, what="token")
    logits, state = forward(cfg, params, jnp.asarray(token)[:, None], state, deltas=deltas)
    return logits[:, 0], state
