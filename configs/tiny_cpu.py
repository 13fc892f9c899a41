"""The embedded default: a tiny RWKV-7 that runs end to end on a laptop CPU."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.tokenizer = "byte"  # "byte" (258 ids) or "world" (65,536 ids)

    # Model shape; turned once into a frozen prosg_jax.RWKVConfig.
    config.model = ml_collections.ConfigDict()
    config.model.version = 7
    config.model.vocab_size = 258  # the byte tokenizer's vocabulary
    config.model.d_model = 64
    config.model.n_layer = 2
    config.model.head_size = 32
    config.model.dtype = "float32"
    # Time recurrence: "auto" (fastest here), "scan" (per token) or "chunked".
    config.model.wkv_impl = "auto"

    # Generation demo.
    config.prompt = "The key of the blue door is 4417. Remember it."
    config.max_new_tokens = 32
    config.temperature = 0.0  # greedy
    return config
