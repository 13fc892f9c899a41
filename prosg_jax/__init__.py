"""prosg_jax: Prompt Synthetic Gradients for recurrent LMs in JAX."""
