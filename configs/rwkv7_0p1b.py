"""RWKV-7 0.1B (L12, C768) with its ProSG module, for one GPU/TPU host or more.

Every field not set here is the embedded default's (configs/tiny_cpu.py, where
each one is documented). bf16 compute with float32 master weights; byte vocab
by default (``--config.tokenizer=world --config.model.vocab_size=65536`` for the
world tokenizer; the base stage needs the byte tokenizer on the generated data).
"""

from prosg_jax.experiment import sibling_config


def get_config():
    config = sibling_config(__file__, "tiny_cpu")
    config.model.d_model = 768  # residual width
    config.model.n_layer = 12  # blocks
    config.model.head_size = 64  # 12 heads
    config.model.dtype = "bfloat16"  # compute dtype; master weights stay float32
    config.mesh.data = -1  # all devices data-parallel ...
    config.mesh.fsdp = 1  # ... set e.g. 8 to shard params and Adam state over 8 devices
    config.prosg.rank = 16  # rank >= facts per prompt
    config.prosg.sg_hidden = 256  # SG predictor width
    config.prosg.key_dim = 64  # pooling key width
    config.data.train_mixture = (
        "prompt_retention/d64_f8:1,prompt_retention/d256_f8:1,prompt_retention/d1024_f8:1,"
        "mqar/l256_kv16_voc256:1"
    )
    config.data.seq_len = 2048  # packed row length of the base stage
    config.train.stages = "base,prosg"  # no joint stage
    config.train.forget_frac = 0.5  # half of each batch from an empty state (tiny_cpu: 0.7)
    config.train.base.steps = 20_000  # base LM
    config.train.base.lr = 6e-4
    config.train.base.warmup_steps = 1_000
    config.train.base.batch_size = 64
    config.train.prosg.steps = 5_000  # SG module on the frozen base
    config.train.prosg.lr = 1e-3
    config.train.prosg.warmup_steps = 200
    config.train.prosg.batch_size = 64
    config.train.log_every = 50
    config.train.checkpoint_every = 1_000
    config.train.keep_checkpoints = 3
    config.eval.methods = "none,repeat_prompt,true_grad,prosg"
    config.eval.distances = "64,256,1024,4096"  # 4096 is longer than training
    config.eval.num_facts = 8
    config.eval.mqar = "l256_kv16_voc256,l512_kv64_voc256"
    config.eval.num_examples = 100
    config.eval.batch_size = 64
    return config
