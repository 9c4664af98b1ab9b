"""`instruct-jax train`: the gin-configured `trainer.train` (gin: runs/*.gin + models/*.gin)."""
from instruct_jax.cli import gin_setup
from instruct_jax.errors import UsageError
from instruct_jax.train import trainer


def add_arguments(parser) -> None:
  del parser  # Everything is configured through gin.


def run(args) -> None:
  if not args.gin_file:
    raise UsageError("train needs at least one --gin_file (e.g. --gin_file=runs/smoke.gin).")
  train_fn = gin_setup.configured(
      trainer.train, "No gin file binds `trainer.train`; include a runs/*.gin file such as "
      "runs/finetune.gin or runs/smoke.gin.")
  gin_setup.write_config(gin_setup.macro("MODEL_DIR"))
  train_fn()
