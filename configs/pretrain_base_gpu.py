"""Pretrains an L4 C128 text base (the `base` stage only) on one GPU.

It produced ``pretrained/tiny_rwkv7_base.safetensors`` (the command, the step
count and its training curve are in ``pretrained/tiny_rwkv7_base.json``), the
default run's base until ``pretrained/tiny_rwkv7_mqar_base.sh`` replaced it: a
smaller base trained on two CPU cores with an MQAR warm-up first, which copies
4-digit codes where this one never does. That script reuses this config's text
mixture.

The recipe: short distractors only (D <= 64: a long distractor is compute that
teaches nothing about recall), 1, 2 or 4 facts per prompt, every token scored
with answers weighted 10x (the questions repeat the prompt's names, so the LM
loss trains copying), 4 heads of 32, lr 3e-3, batch 32 x 1,024 tokens.

Measured (H100, ``--config.train.base.steps=1800``, 308 s, 59M tokens): with
the learning rate held at 3e-3 and a cosine over the last 20% of steps,
recall appears at step ~500 and then plateaus: teacher-forced exact match on
validation 0.66 (1 fact) and 0.27 (4 facts) at D = 64, flat to D = 1024, gone
by D = 4096. The same data with the cosine decayed over 600 steps recalled
nothing. Why it plateaus (``results/text_base_probe/``): it never recalls a
4-digit code (it writes one constant number, even after its collapsed digit
embeddings are re-drawn distinct and fine-tuned), and with 4 facts it often
retrieves another fact's word. An MQAR warm-up before the text fixes the codes
(``pretrained/tiny_rwkv7_mqar_base.sh``).
"""

import ml_collections

from prosg_jax.experiment import sibling_config

# Distances and fact counts of the base-stage mixture: "d<D>_f<facts>".
_MIXTURE = ("d0_f1", "d16_f2", "d32_f4", "d48_f1", "d64_f2", "d64_f4")


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "tiny_cpu")
    config.init_from = ""  # from scratch
    config.model.d_model = 128  # L4 C128, 4 heads of 32: the GPU base's shape
    config.model.n_layer = 4
    config.model.head_size = 32
    config.train.stages = "base"  # the SG module is trained by the default run itself
    config.data.train_mixture = ",".join(
        f"prompt_retention/{name}_n6000:{2 if name == 'd64_f4' else 1}" for name in _MIXTURE
    )
    config.data.loss_on = "all"  # every real token scored ...
    config.data.answer_weight = 10.0  # ... answers 10x
    config.data.seq_len = 1024  # packed row length
    config.data.num_workers = 0  # batches are cheap (~20 ms); no worker processes
    config.train.base.steps = 1800  # optimizer steps (the shipped base)
    config.train.base.lr = 3e-3  # peak learning rate
    config.train.base.warmup_steps = 100  # linear warmup, then lr held at its peak ...
    config.train.decay_frac = 0.2  # ... until the cosine to 0.1 * lr over the last 20% of steps
    config.train.base.batch_size = 32  # packed rows of seq_len tokens per step
    config.train.base.mixture = ""  # use data.train_mixture
    config.train.log_every = 50  # steps between metrics lines
    config.train.checkpoint_every = 500  # steps between orbax checkpoints
    config.train.progress_bar = False  # plain log lines in a batch job
    return config
