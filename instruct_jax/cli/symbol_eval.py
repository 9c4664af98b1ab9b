"""`instruct-jax symbol-eval`: the gin-configured symbol-tuning evaluation suites."""
from instruct_jax.cli import gin_setup
from instruct_jax.errors import UsageError
from instruct_jax.eval import symbol_suites


def run(args) -> None:
  """Runs the gin-configured `symbol_suites.evaluate_suites` (it prints the report)."""
  if not args.gin_file:
    raise UsageError("symbol-eval needs gin files: a model gin and "
                     "experiments/symbol_tuning/eval.gin, e.g. "
                     "--gin_file=models/flan_t5/base.gin "
                     "--gin_file=experiments/symbol_tuning/eval.gin "
                     "--gin.CHECKPOINT_PATH=\"'/path/checkpoint_2000'\".")
  evaluate_fn = gin_setup.configured(
      symbol_suites.evaluate_suites, "No gin file binds `symbol_eval.evaluate_suites`; add "
      "--gin_file=experiments/symbol_tuning/eval.gin.")
  try:
    evaluate_fn()
  except FileNotFoundError as e:
    raise UsageError(f"{e} Set --gin.CHECKPOINT_PATH to a MODEL_DIR or a checkpoint_<step> "
                     "directory, and --gin.BIGBENCH_DIR to a BIG-bench checkout (or None).") from e
