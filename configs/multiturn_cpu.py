"""Sessions: the default run's SG module fine-tuned to remember turns one at a time.

``python train.py --config configs/multiturn_cpu.py --workdir W`` fine-tunes the
default run (``pretrained/mqar_prosg``: base and SG module, the ``joint``
stage) on conversations of T = 1, 2, 4 or 8 turns of 8 key-value pairs, each
turn derived alone from a fresh state and the turns' deltas summed
(``prosg.segment_len = 16``: what a :class:`prosg_jax.Session` remembers of
its turns), then D distractor tokens and queries on every turn's pairs. About
7 minutes on two idle CPU cores (1,000 steps). One leg recalls turn 1 after 8
turns 7.9 points below 1 turn; a second leg from the first (``init_from`` and
``sg_from`` its workdir, ``--config.seed=3``) closes the gap to 1.7 points:
``bash pretrained/multiturn_prosg.sh W`` makes the shipped
``pretrained/multiturn_prosg``. ``experiments/multiturn/run.py --runs W``
measures what a session recalls of turn 1 (``experiments/multiturn/README.md``).
"""

import ml_collections

from prosg_jax.experiment import sibling_config

_TURNS = {1: "l128_kv8", 2: "l128_kv16", 4: "l128_kv32", 8: "l256_kv64"}  # 8 pairs a turn


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "default")
    config.init_from = "pretrained/mqar_prosg/base.safetensors"
    config.sg_from = "pretrained/mqar_prosg"
    config.prosg.segment_len = 16  # one turn: 8 pairs of 2 tokens
    config.train.joint.mixture = ",".join(
        f"mqar/{task}_voc256_d{d}_n20000" for task in _TURNS.values() for d in (64, 256)
    )
    # One batch shape for every mixture part: the longest prompt (8 turns) and
    # continuation (8 turns' queries after 256 distractor tokens), one compile.
    config.data.prompt_len = 128
    config.data.cont_len = 448
    config.train.joint.steps = 1000
    config.train.joint.lr = 2e-3
    return config
