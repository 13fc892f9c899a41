"""RWKV-4 169M (L12, C768) with its ProSG module, for one GPU/TPU host or more.

The RWKV-7 0.1B recipe (configs/rwkv7_0p1b.py: the same width, depth, dtype,
SG module, stages and schedules) on an RWKV-4 model; only what differs is set
here. Every field neither file sets is the embedded default's
(configs/tiny_cpu.py, where each one is documented).
"""

from prosg_jax.experiment import sibling_config


def get_config():
    config = sibling_config(__file__, "rwkv7_0p1b")
    config.model.version = 4  # RWKV-4 (head_size is ignored)
    config.model.head_size = 32  # tiny_cpu's value; unused by RWKV-4
    # RWKV-4 targets also include att.key/att.receptance/ffn.receptance.
    config.prosg.matrices = "att.value,att.output,ffn.value"
    config.data.train_mixture = (
        "prompt_retention/d64_f8:1,prompt_retention/d256_f8:1,prompt_retention/d1024_f8:1"
    )
    config.eval.mqar = "l256_kv16_voc256"
    return config
