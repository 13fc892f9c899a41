"""Evaluates a prosg_jax model; see ``prosg_jax.eval_lib``.

python eval.py --config configs/tiny_cpu.py --workdir /tmp/prosg_demo
"""

from absl import app, flags
from ml_collections import config_flags

from prosg_jax import eval_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/tiny_cpu.py", "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/prosg_jax", "Directory with the checkpoint.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    eval_lib.run_demo(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
