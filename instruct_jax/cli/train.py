"""`instruct-jax train`: the gin-configured `trainer.train` (gin: runs/*.gin + models/*.gin)."""
import gin

from instruct_jax.cli import console
from instruct_jax.cli import gin_setup
from instruct_jax.errors import UsageError
from instruct_jax.train import trainer


def run(args) -> None:
  """Trains; the resolved config goes to the trainer, which records it once it checked it.

  (Writing config.gin here, before anything is validated, would overwrite the
  record of a running or finished run with a configuration that may never run.)
  The command's log moves into MODEL_DIR/logs once the trainer holds MODEL_DIR
  (a launch refused the lease writes nothing there).
  """
  if not args.gin_file:
    raise UsageError("train needs at least one --gin_file (e.g. --gin_file=runs/smoke.gin).")
  train_fn = gin_setup.configured(
      trainer.train, "No gin file binds `trainer.train`; include a runs/*.gin file such as "
      "runs/finetune.gin or runs/smoke.gin.")
  train_fn(take_over_lease=args.force, run_config=gin.config_str(),
           console_log=console.move_log_into)
