"""Stage 2: the SG module, which predicts the error a true gradient would use.

For a target ``W`` in block ``i``, from the block's residual stream ``h_t``
and its final recurrent state ``S_P``::

    z_t = LN(h_t),   c_t = LN(read(S_P, W_s z_t)),
    δ̂_t = W_2 gelu(W_1 [z_t; c_t] + b_1)

and with ``sg_lookahead`` also ``n_t = LN'(h_{t+1})`` (0 after the last
prompt token): ``δ̂_t = W_2 gelu(W_1 [z_t; c_t; n_t] + b_1)``.

``read`` queries the state: per head ``S_P q`` for RWKV-7, ``(a_P / b_P) ⊙ q``
(the WKV average) for RWKV-4. Compressed to rank r (:mod:`.compress`), this
gives ``ΔW = s U Vᵀ`` with a learned per-target scale ``s`` initialised to 0,
so an untrained SG module is exactly the base model. No gradient is taken.

Axis legend: ``B`` batch, ``P`` prompt length, ``C`` d_model, ``O`` d_out.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from prosg_jax.config import ProSGConfig, RWKVConfig
from prosg_jax.lowrank import LowRankDelta
from prosg_jax.models.family import family_of, target_shape
from prosg_jax.models.layers import Deltas, layer_norm, ln_params
from prosg_jax.prosg.compress import compress
from prosg_jax.prosg.states import PromptStates


def init(key: Array, model_cfg: RWKVConfig, prosg_cfg: ProSGConfig) -> dict:
    """SG-module parameters ``φ``: one small predictor and pooler per target.

    The per-target ``scale`` starts at 0, so deltas start as exactly zero; the
    output layer starts small rather than zero so that gradients reach every
    parameter once the scale has moved.
    """
    c, hid, kd = model_cfg.d_model, prosg_cfg.sg_hidden, prosg_cfg.key_dim
    n_in = (3 if prosg_cfg.sg_lookahead else 2) * c
    sg = {}
    for i, name in enumerate(prosg_cfg.targets(model_cfg)):
        d_out, _ = target_shape(model_cfg, name)
        k = jax.random.split(jax.random.fold_in(key, i), 5)
        sg[name] = {
            "ln": ln_params(c),
            "ln_read": ln_params(c),
            "w_state": jax.random.normal(k[0], (c, c)) / math.sqrt(c),
            "w_in": jax.random.normal(k[1], (n_in, hid)) / math.sqrt(n_in),
            "b_in": jnp.zeros((hid,)),
            "w_out": jax.random.normal(k[2], (hid, d_out)) / math.sqrt(hid),
            "kappa": jax.random.normal(k[3], (c, kd)) / math.sqrt(c),
            "queries": jax.random.normal(k[4], (prosg_cfg.rank, kd)),
            "scale": jnp.zeros(()),
        }
        if prosg_cfg.sg_lookahead:
            sg[name]["ln_next"] = ln_params(c)
    return sg


def _leaf_shapes(tree) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in flat}


@functools.lru_cache(maxsize=32)
def _sg_spec(model_cfg: RWKVConfig, prosg_cfg: ProSGConfig) -> dict[str, dict[str, tuple]]:
    """target → leaf path → shape of what :func:`init` builds (traced once per config)."""
    shapes = jax.eval_shape(lambda: init(jax.random.key(0), model_cfg, prosg_cfg))
    return {t: _leaf_shapes(tree) for t, tree in shapes.items()}


def check_sg_params(model_cfg: RWKVConfig, prosg_cfg: ProSGConfig, sg_params) -> None:
    """Raises ``ValueError`` unless ``sg_params`` fit ``prosg_cfg`` (``method="prosg"`` only).

    SG params built for another rank, width or target set would otherwise fail
    deep inside the model, or silently leave targets without deltas.
    """
    if prosg_cfg.method != "prosg":
        return
    if sg_params is None:
        raise ValueError("method='prosg' needs sg_params (from prosg_jax.prosg.init or a Run)")
    if not isinstance(sg_params, Mapping):
        raise ValueError(f"sg_params must be a dict by target, got {type(sg_params).__name__}")
    want = _sg_spec(model_cfg, prosg_cfg)
    missing = [t for t in want if t not in sg_params]
    if missing:
        raise ValueError(
            f"sg_params has no entry for target(s) {missing[:3]}: they were built for another "
            "target set (ProSGConfig.matrices/layers)"
        )
    extra = [t for t in sg_params if t not in want]
    if extra:
        raise ValueError(
            f"sg_params has target(s) {extra[:3]} that prosg_cfg does not select: they were "
            "built for another target set (ProSGConfig.matrices/layers)"
        )
    for target, leaves in want.items():
        have = _leaf_shapes(sg_params[target])
        for leaf, shape in leaves.items():
            if have.get(leaf) != shape:
                got = "nothing" if leaf not in have else f"shape {have[leaf]}"
                raise ValueError(
                    f"sg_params[{target!r}]{leaf} has {got}, prosg_cfg expects {shape} "
                    f"(rank={prosg_cfg.rank}, sg_hidden={prosg_cfg.sg_hidden}, "
                    f"key_dim={prosg_cfg.key_dim}): they were built for another config"
                )


def predict_errors(
    cfg: RWKVConfig, sg: dict, h: Float[Array, "B P C"], layer_state
) -> tuple[Float[Array, "B P O"], Float[Array, "B P C"]]:
    """``(δ̂_t, z_t)``: the predicted output-side errors and the normalised hiddens.

    ``h`` is left-aligned (the last column is every row's last prompt token),
    so ``h_{t+1}`` is a shift by one column; ``sg`` holds ``ln_next`` exactly
    when the SG module looks ahead.
    """
    h = h.astype(jnp.float32)
    z = layer_norm(h, sg["ln"])
    query = z @ sg["w_state"]
    read = layer_norm(family_of(cfg.version).read_state(cfg, layer_state, query), sg["ln_read"])
    features = [z, read]
    if "ln_next" in sg:
        following = layer_norm(h[:, 1:], sg["ln_next"])
        features.append(jnp.pad(following, ((0, 0), (0, 1), (0, 0))))
    hidden = jax.nn.gelu(jnp.concatenate(features, -1) @ sg["w_in"] + sg["b_in"])
    return hidden @ sg["w_out"], z


def synthetic_deltas(
    model_cfg: RWKVConfig, sg_params: dict, prosg_cfg: ProSGConfig, states: PromptStates
) -> Deltas:
    """Per-example ``ΔW = s U Vᵀ`` for every target, from prompt states (no gradients)."""
    deltas = {}
    for name in prosg_cfg.targets(model_cfg):
        block = name.rsplit(".", 2)[0]
        layer = int(block.split(".")[1])
        sg = sg_params[name]
        delta_hat, z = predict_errors(model_cfg, sg, states.hidden[block], states.state[layer])
        u, v = compress(
            prosg_cfg,
            sg,
            delta_hat,
            states.inputs[name],
            z=z,
            mask=states.mask,
            positions=states.positions,
        )
        deltas[name] = LowRankDelta(u=u, v=v, scale=sg["scale"])
    return deltas
