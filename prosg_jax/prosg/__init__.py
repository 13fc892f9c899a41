"""Prompt Synthetic Gradients: prompt states → rank-r synthetic gradients → deltas.

One module per stage:

- :mod:`.states` — the prompt pass (and the padding convention: prompts are
  right-padded ``int32[B, P]`` with ``prompt_lengths int32[B]``);
- :mod:`.sg` — the SG module ``δ̂_t = g_φ(h_t, S_P)``;
- :mod:`.compress` — rank-r factors of ``Σ_t δ̂_t x_tᵀ`` (query / sketch / power);
- :mod:`.ablations` — ``none`` / ``true_grad`` / ``repeat_prompt`` and the
  dispatch over ``ProSGConfig.method`` (:func:`derive_deltas`);
- :mod:`.grads` — per-example true gradients in factored form;
- :mod:`.losses` — the continuation loss and synthetic-gradient matching.

Deltas act on every token after the prompt, the first generated or scored one
included: the base model reads the prompt up to its last token, the deltas
are derived from the whole prompt, and the last token is replayed under them.
"""

from prosg_jax.lowrank import weight
from prosg_jax.models.family import target_shape
from prosg_jax.prosg.ablations import derive_deltas, repeat_prompts, true_grad_deltas
from prosg_jax.prosg.compress import compress, sketch_matrix
from prosg_jax.prosg.grads import (
    Factored,
    factored_grads,
    masked_cross_entropy,
    per_example_ce,
    token_nll,
)
from prosg_jax.prosg.losses import (
    Batch,
    answer_counts,
    continuation_inputs,
    continuation_logits,
    continuation_loss,
    sg_match_loss,
)
from prosg_jax.prosg.sg import check_sg_params, init, predict_errors, synthetic_deltas
from prosg_jax.prosg.states import (
    PromptStates,
    PromptTail,
    join_rows,
    left_align,
    prompt_states,
    prompt_tail,
    right_padded,
)

__all__ = [
    "Batch",
    "Factored",
    "PromptStates",
    "PromptTail",
    "answer_counts",
    "check_sg_params",
    "compress",
    "continuation_inputs",
    "continuation_logits",
    "continuation_loss",
    "derive_deltas",
    "factored_grads",
    "init",
    "join_rows",
    "left_align",
    "masked_cross_entropy",
    "per_example_ce",
    "token_nll",
    "predict_errors",
    "prompt_states",
    "prompt_tail",
    "repeat_prompts",
    "right_padded",
    "sg_match_loss",
    "sketch_matrix",
    "synthetic_deltas",
    "target_shape",
    "true_grad_deltas",
    "weight",
]
