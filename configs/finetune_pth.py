"""ProSG on an imported official checkpoint (RWKV-7 World 0.1B, world tokenizer).

    python train.py --config configs/finetune_pth.py --workdir W \
        --config.init_from=/path/to/RWKV-x070-World-0.1B.pth
    python eval.py --config configs/finetune_pth.py --workdir W

The base is frozen (stage ``prosg`` only); its shape below must match the file
(checked before any step). For another checkpoint, override ``config.model.*``.
Every field not set here is the embedded default's (configs/tiny_cpu.py).
"""

from prosg_jax.experiment import sibling_config


def get_config():
    config = sibling_config(__file__, "tiny_cpu")
    config.init_from = "RWKV-x070-World-0.1B.pth"  # the official checkpoint (.pth/.safetensors)
    config.tokenizer = "world"  # RWKV world tokenizer (65,536 ids)
    config.model.version = 7
    config.model.vocab_size = 65536
    config.model.d_model = 768
    config.model.n_layer = 12
    config.model.head_size = 64
    config.model.dtype = "bfloat16"
    config.train.stages = "prosg"  # the SG module only, on the frozen base
    config.train.forget_frac = 0.5  # half of each batch from an empty state (tiny_cpu: 0.7)
    config.prosg.rank = 16
    config.prosg.sg_hidden = 256
    config.prosg.key_dim = 64
    config.data.train_mixture = "prompt_retention/d256_f8:1,prompt_retention/d1024_f8:1"
    config.data.loss_on = "answers"  # the base already models text
    config.train.prosg.steps = 3_000
    config.train.prosg.lr = 1e-3
    config.train.prosg.warmup_steps = 100
    config.train.prosg.batch_size = 32
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.eval.methods = "none,repeat_prompt,true_grad,prosg"
    config.eval.distances = "64,256,1024,4096"
    config.eval.num_facts = 8
    config.eval.mqar = ""  # MQAR ids are not world-tokenizer text
    config.eval.num_examples = 100
    config.eval.batch_size = 32
    return config
