"""`instruct-jax eval`: the gin-configured evaluation of one checkpoint (gin: runs/eval.gin)."""
from instruct_jax.cli import gin_setup
from instruct_jax.errors import UsageError
from instruct_jax.eval import evaluation


def run(args) -> None:
  """Runs the gin-configured `evaluation.evaluate` (it prints the report tables)."""
  if not args.gin_file:
    raise UsageError("eval needs gin files: a model gin and runs/eval.gin, e.g. "
                     "--gin_file=models/t5_1_1/base.gin --gin_file=runs/eval.gin "
                     "--gin.CHECKPOINT_PATH=\"'/path/checkpoint_1000'\" "
                     "--gin.MIXTURE_OR_TASK_NAME=\"'my_task'\".")
  evaluate_fn = gin_setup.configured(evaluation.evaluate, "No gin file binds "
                                     "`evaluation.evaluate`; add --gin_file=runs/eval.gin.")
  try:
    evaluate_fn()
  except FileNotFoundError as e:
    raise UsageError(f"{e} Set --gin.CHECKPOINT_PATH to a MODEL_DIR or a checkpoint_<step> "
                     "directory.") from e
