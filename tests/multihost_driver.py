"""One process of the tiny training run that ``test_multihost.py`` starts (not a test).

Usage: ``python multihost_driver.py WORKDIR DATA_DIR DISTRIBUTED(0|1)``; with
``1`` the process joins the job described by ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (``--config.distributed=True``).
"""

import sys

from train_fixtures import MQAR_TRAIN, tiny_config

from prosg_jax.train import trainer

workdir, data_dir, distributed = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
config = tiny_config(base=3, prosg=3)
config.distributed = distributed
config.data.data_dir = data_dir
config.data.train_mixture = MQAR_TRAIN  # one dataset: one compiled step per stage
config.train.checkpoint_every = 2  # a mid-stage checkpoint, written by both processes
trainer.train(config, workdir)
