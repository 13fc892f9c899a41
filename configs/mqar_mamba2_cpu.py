"""ProSG on Mamba-2: distance-controlled MQAR with a Mamba-2 base of the RWKV-7 base's width.

The task, data, schedule and stages are ``configs/mqar_distance_cpu.py``'s; only
the model changes: Mamba-2 with ``d_model = 64``, 2 layers (as the RWKV-7 base),
inner width 128 in 4 heads of 32, state size 32, one B/C group, convolution
width 4. The deltas go on both of a block's matrices (``mixer.in_proj``,
``mixer.out_proj``). ``experiments/mamba2/run.sh`` trains and scores the base,
the SG stage on the frozen base, the joint stage and the control, per training
seed; the table is in ``docs/results.md`` ("Mamba-2").
"""

import ml_collections

from prosg_jax.experiment import sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "mqar_distance_cpu")
    # A new section: the version field changes type (int -> str), which a
    # ConfigDict refuses in place.
    config.model = ml_collections.ConfigDict(
        {
            **config.model.to_dict(),
            "version": "mamba2",
            "head_size": 32,  # head dimension P: 4 heads over the inner width
            "d_ffn": 0,  # inner width: 0 = 2 * d_model
            "d_state": 32,
            "n_groups": 1,
            "d_conv": 4,
        }
    )
    config.prosg.matrices = "mixer.in_proj,mixer.out_proj"
    return config
