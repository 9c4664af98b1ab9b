"""`instruct-jax bench`: the gin-configured train-step, decoding, input or compile-time benchmark.

With --against=hf (BENCH_AGAINST) the train and decode modes run the same model
in transformers beside ours (benchmarks/against_hf).

runs/bench.gin is parsed after the user's gin files (it binds the benchmark
functions to %MODEL, %OPTIMIZER and BENCH_* macros). The size flags are kept
as shortcuts: each one given rebinds its BENCH_* macro.
"""
import gin

from instruct_jax.benchmarks import against_hf
from instruct_jax.benchmarks import compile_time
from instruct_jax.benchmarks import decode_speed
from instruct_jax.benchmarks import input_pipeline
from instruct_jax.benchmarks import report
from instruct_jax.benchmarks import train_step
from instruct_jax.cli import flags
from instruct_jax.cli import gin_setup
from instruct_jax.errors import UsageError

# Parsed after the command line's --gin_file files, before its --gin bindings.
GIN_FILES = ("runs/bench.gin",)


def _flag_bindings(args) -> list[str]:
  bindings = [f"{name} = {getattr(args, flag)}" for flag, name in flags.BENCH_FLAG_MACROS.items()
              if getattr(args, flag) is not None]
  if args.decode_methods is not None:
    methods = tuple(m.strip() for m in args.decode_methods.split(",") if m.strip())
    if not methods or set(methods) - set(flags.DECODE_METHODS):
      raise UsageError(f"--decode_methods={args.decode_methods!r}; use a comma-separated "
                       "subset of greedy,beam.")
    bindings.append(f"BENCH_DECODE_METHODS = {methods!r}")
  if args.against is not None:
    bindings.append(f"BENCH_AGAINST = {args.against!r}")
  return bindings


def _against(mode: str) -> str | None:
  """The reference implementation to run beside ours (BENCH_AGAINST), checked."""
  against = gin.get_configurable(against_hf.reference)()
  if against is not None and mode not in ("train", "decode"):
    raise UsageError(f"--against={against} compares the train step and decoding; use it "
                     "with --mode=train or --mode=decode.")
  return against


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
  against = _against(args.mode)
  if args.mode == "decode":
    methods = gin_setup.macro("BENCH_DECODE_METHODS")
    if not methods or set(methods) - set(flags.DECODE_METHODS):
      raise UsageError(f"BENCH_DECODE_METHODS={methods!r}; use a subset of {flags.DECODE_METHODS}.")
    benchmark = against_hf.benchmark_decode_against_hf if against else (
        decode_speed.benchmark_decode)
    results = gin.get_configurable(benchmark)()
  elif args.mode == "input":
    results = gin.get_configurable(input_pipeline.benchmark_input_pipeline)()
    print(input_pipeline.format_table(results), flush=True)
    return
  elif args.mode == "compile":
    rows = gin.get_configurable(compile_time.benchmark_compile_time)()
    print(compile_time.format_table(rows), flush=True)
    return
  else:
    benchmark = against_hf.benchmark_train_against_hf if against else (
        train_step.benchmark_train_step)
    results = gin.get_configurable(benchmark)()
  print(report.format_report(results), flush=True)
