"""Training: :func:`prosg_jax.train.trainer.train` (what ``train.py`` runs) and its
parts: config checks, typed experiment, data, optimizer, mesh, steps, loop,
orbax checkpoints and metrics."""
