"""Trains a prosg_jax model; see ``prosg_jax.train.trainer``.

python train.py --workdir W  # configs/default.py, the README's main job

Running the same command again resumes from the latest checkpoint.
"""

from absl import flags
from ml_collections import config_flags

from prosg_jax import cli
from prosg_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", cli.DEFAULT_CONFIG, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/prosg_jax", "Checkpoints, metrics and exports.")


def main(argv):
    del argv
    try:
        trainer.train(_CONFIG.value, _WORKDIR.value)
    except trainer.Preempted as e:
        print(f"train.py: {e}", flush=True)
        raise SystemExit(143) from None


if __name__ == "__main__":
    cli.run(main, _CONFIG)
