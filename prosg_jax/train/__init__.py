"""Training internals behind :mod:`prosg_jax.train_lib` (config, data, optimizer, mesh, loop)."""
