"""Evaluates a trained prosg_jax run; see ``prosg_jax.eval``.

python eval.py --workdir W  # configs/default.py, the README's main job

Writes results.json, results.md and recall_vs_distance.png into the workdir.
"""

from absl import flags
from ml_collections import config_flags

from prosg_jax import cli
from prosg_jax.eval import evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", cli.DEFAULT_CONFIG, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/prosg_jax", "Directory of the trained run.")


def main(argv):
    del argv
    evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main, _CONFIG)
