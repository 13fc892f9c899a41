"""Tokenizers, locally generated TFDS datasets and the grain input pipeline."""
