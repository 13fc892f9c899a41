"""One process of the tiny training run that ``test_multihost.py`` starts (not a test).

Usage: ``python multihost_driver.py WORKDIR DATA_DIR DISTRIBUTED(0|1)``; with
``1`` the process joins the job described by ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (``--config.distributed=True``).
"""

import sys

from train_fixtures import tiny_config

from prosg_jax import train_lib

workdir, data_dir, distributed = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
config = tiny_config(base=4, prosg=4)
config.distributed = distributed
config.data.data_dir = data_dir
train_lib.train(config, workdir)
