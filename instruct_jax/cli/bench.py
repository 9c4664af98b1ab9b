"""`instruct-jax bench`: the gin-configured train-step or decoding benchmark of a model gin.

runs/bench.gin is parsed after the user's gin files (it binds the benchmark
functions to %MODEL, %OPTIMIZER and BENCH_* macros). The size flags are kept
as shortcuts: each one given rebinds its BENCH_* macro.
"""
import gin

from instruct_jax.benchmarks import decode_speed
from instruct_jax.benchmarks import report
from instruct_jax.benchmarks import train_step
from instruct_jax.cli import gin_setup
from instruct_jax.errors import UsageError

# Parsed after the command line's --gin_file files, before its --gin bindings.
GIN_FILES = ("runs/bench.gin",)
DECODE_METHODS = ("greedy", "beam")
# Shortcut flag -> the macro of runs/bench.gin it sets.
_FLAG_MACROS = {
    "batch_size": "BENCH_BATCH_SIZE",
    "input_length": "BENCH_INPUT_LENGTH",
    "target_length": "BENCH_TARGET_LENGTH",
    "steps": "BENCH_STEPS",
    "num_partitions": "BENCH_NUM_PARTITIONS",
    "parameter_partitioning_dims": "BENCH_PARAMETER_PARTITIONING_DIMS",
    "num_beams": "BENCH_NUM_BEAMS",
}


def add_arguments(parser) -> None:
  parser.add_argument("--mode", choices=("train", "decode"), default="train",
                      help="train: the train step; decode: greedy and beam-search decoding "
                           "with and without the KV cache.")
  for flag, name in _FLAG_MACROS.items():
    parser.add_argument(f"--{flag}", type=int, default=None,
                        help=f"Shortcut for --gin.{name}=N (runs/bench.gin).")
  parser.add_argument("--decode_methods", default=None,
                      help="Shortcut for --gin.BENCH_DECODE_METHODS: comma-separated subset "
                           "of greedy,beam.")


def _flag_bindings(args) -> list[str]:
  bindings = [f"{name} = {getattr(args, flag)}" for flag, name in _FLAG_MACROS.items()
              if getattr(args, flag) is not None]
  if args.decode_methods is not None:
    methods = tuple(m.strip() for m in args.decode_methods.split(",") if m.strip())
    if not methods or set(methods) - set(DECODE_METHODS):
      raise UsageError(f"--decode_methods={args.decode_methods!r}; use a comma-separated "
                       "subset of greedy,beam.")
    bindings.append(f"BENCH_DECODE_METHODS = {methods!r}")
  return bindings


def run(args) -> None:
  if not args.gin_file:
    raise UsageError("bench needs a model gin, e.g. --gin_file=models/t5_1_1/base.gin.")
  bindings = _flag_bindings(args)
  if bindings:
    with gin.unlock_config():
      gin.parse_config(bindings)
  if gin_setup.macro("MODEL") is None:
    raise UsageError("bench needs a model gin that defines MODEL, e.g. "
                     "--gin_file=models/t5_1_1/base.gin.")
  if args.mode == "decode":
    methods = gin_setup.macro("BENCH_DECODE_METHODS")
    if not methods or set(methods) - set(DECODE_METHODS):
      raise UsageError(f"BENCH_DECODE_METHODS={methods!r}; use a subset of {DECODE_METHODS}.")
    results = gin.get_configurable(decode_speed.benchmark_decode)()
  else:
    results = gin.get_configurable(train_step.benchmark_train_step)()
  print(report.format_report(results), flush=True)
