"""Allows `python -m instruct_jax ...` as an alias of the `instruct-jax` console script."""
from instruct_jax.cli import main

if __name__ == "__main__":
  main()
