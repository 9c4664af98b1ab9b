"""`instruct-jax infer`: predict or score a JSON-lines / TSV file (gin: runs/infer.gin)."""
import jax

from instruct_jax.cli import gin_setup
from instruct_jax.errors import UsageError
from instruct_jax.eval import inference


def run(args) -> None:
  """Runs the gin-configured `inference.infer_file` on the flags' files."""
  if not args.gin_file:
    raise UsageError("infer needs gin files: a model gin and runs/infer.gin, e.g. "
                     "--gin_file=models/t5_1_1/base.gin --gin_file=runs/infer.gin "
                     "--gin.CHECKPOINT_PATH=\"'/path/checkpoint_1000'\".")
  infer_fn = gin_setup.configured(inference.infer_file, "No gin file binds `inference.infer_file`; add "
                     "--gin_file=runs/infer.gin.")
  try:
    summary = infer_fn(input_file=args.input_file, output_file=args.output_file,
                       mode=args.mode, skip_bad_lines=args.skip_bad_lines,
                       input_format=args.input_format, resume=args.resume)
  except FileNotFoundError as e:
    raise UsageError(f"{e} Set --gin.CHECKPOINT_PATH to a MODEL_DIR or a checkpoint_<step> "
                     "directory.") from e
  if jax.process_index() == 0:
    skipped = (f", skipped {summary['skipped_lines']} bad line(s)"
               if summary["skipped_lines"] else "")
    if args.resume:
      new = summary["examples"] - summary["resumed"]
      print(f"Resumed after {summary['resumed']} result(s) already in {summary['output_file']} "
            f"(that many input examples skipped); wrote {new} more{skipped} in "
            f"{summary['seconds']:.1f}s.", flush=True)
    else:
      print(f"Wrote {summary['examples']} result(s) to {summary['output_file']}{skipped} in "
            f"{summary['seconds']:.1f}s.", flush=True)
