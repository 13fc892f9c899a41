"""RWKV-4 169M (L12, C768) with its ProSG module, for one GPU/TPU host or more.

Every field not set here is the embedded default's (configs/tiny_cpu.py, where
each one is documented).
"""

from prosg_jax.experiment import sibling_config


def get_config():
    config = sibling_config(__file__, "tiny_cpu")
    config.model.version = 4  # RWKV-4 (head_size is ignored)
    config.model.d_model = 768
    config.model.n_layer = 12
    config.model.dtype = "bfloat16"  # compute dtype; master weights stay float32
    config.prosg.rank = 16
    config.prosg.sg_hidden = 256
    config.prosg.key_dim = 64
    # RWKV-4 targets also include att.key/att.receptance/ffn.receptance.
    config.prosg.matrices = "att.value,att.output,ffn.value"
    config.data.train_mixture = (
        "prompt_retention/d64_f8:1,prompt_retention/d256_f8:1,prompt_retention/d1024_f8:1"
    )
    config.data.seq_len = 2048
    config.train.stages = "base,prosg"  # no joint stage
    config.train.forget_frac = 0.5  # half of each batch from an empty state (tiny_cpu: 0.7)
    config.train.base.steps = 20_000
    config.train.base.lr = 6e-4
    config.train.base.warmup_steps = 1_000
    config.train.base.batch_size = 64
    config.train.prosg.steps = 5_000
    config.train.prosg.lr = 1e-3
    config.train.prosg.warmup_steps = 200
    config.train.prosg.batch_size = 64
    config.train.log_every = 50
    config.train.checkpoint_every = 1_000
    config.train.keep_checkpoints = 3
    config.eval.methods = "none,repeat_prompt,true_grad,prosg"
    config.eval.distances = "64,256,1024,4096"
    config.eval.num_facts = 8
    config.eval.mqar = "l256_kv16_voc256"
    config.eval.num_examples = 100
    config.eval.batch_size = 64
    return config
