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
    # The checkpoint's shape (RWKV-7 World 0.1B): it must match the file.
    config.model.update(
        version=7, vocab_size=65536, d_model=768, n_layer=12, head_size=64, dtype="bfloat16"
    )
    config.train.stages = "prosg"  # the SG module only, on the frozen base
    config.train.forget_frac = 0.5  # half of each batch from an empty state (tiny_cpu: 0.7)
    config.prosg.update(rank=16, sg_hidden=256, key_dim=64)
    config.data.train_mixture = "prompt_retention/d256_f8:1,prompt_retention/d1024_f8:1"
    config.data.loss_on = "answers"  # the base already models text
    config.train.prosg.update(steps=3_000, lr=1e-3, warmup_steps=100, batch_size=32)
    config.train.update(log_every=50, checkpoint_every=500)
    config.eval.update(
        methods="none,repeat_prompt,true_grad,prosg",
        distances="64,256,1024,4096",
        num_facts=8,
        num_examples=100,
        batch_size=32,
    )
    config.eval.mqar = ""  # MQAR ids are not world-tokenizer text
    return config
