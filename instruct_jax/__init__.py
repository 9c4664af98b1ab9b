"""instruct_jax: instruction tuning of T5-style and decoder-only models in JAX."""

__version__ = "0.1.0"
