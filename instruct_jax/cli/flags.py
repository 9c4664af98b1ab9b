"""Every command's flags, declared without importing the library.

`instruct-jax --help` and `instruct-jax COMMAND --help` import only this module,
so they answer at once; the command modules (which pull in jax, TensorFlow and
seqio) are imported when a command runs. Choices that mirror a library constant
are checked against it by tests/test_cli.py.
"""
import argparse
from typing import Callable

# `select`: runs/select.gin, and flag -> the select.gin macro it sets when given.
SELECT_GIN = "runs/select.gin"
SELECT_FLAG_MACROS = {
    "model_dir": "MODEL_DIR",
    "mixture": "MIXTURE_OR_TASK_NAME",
    "split": "EVAL_SPLIT",
    "batch_size": "BATCH_SIZE",
    "num_examples": "EVAL_NUM_EXAMPLES",
    "steps": "SELECT_STEPS",
    "output_dir": "EVAL_OUTPUT_DIR",
    "module": "MIXTURE_OR_TASK_MODULE",
    "num_partitions": "NUM_PARTITIONS",
}
SELECT_LENGTH_FLAGS = {"inputs_length": "inputs", "targets_length": "targets"}
SELECT_DEFAULT_MIXTURE = "cot_heldout_math_eval"   # = eval.selection.DEFAULT_MIXTURE

# `bench`: flag -> the runs/bench.gin macro it sets when given.
BENCH_FLAG_MACROS = {
    "batch_size": "BENCH_BATCH_SIZE",
    "input_length": "BENCH_INPUT_LENGTH",
    "target_length": "BENCH_TARGET_LENGTH",
    "steps": "BENCH_STEPS",
    "num_partitions": "BENCH_NUM_PARTITIONS",
    "parameter_partitioning_dims": "BENCH_PARAMETER_PARTITIONING_DIMS",
    "num_beams": "BENCH_NUM_BEAMS",
}
DECODE_METHODS = ("greedy", "beam")
BENCH_AGAINST = ("hf",)                           # = benchmarks.against_hf.REFERENCES

INFER_MODES = ("predict", "score")                # = eval.inference.MODES
INFER_FORMATS = ("auto", "jsonl", "tsv")          # = eval.inference.FORMATS
EXPORT_DTYPES = ("bfloat16", "float16", "float32")  # = checkpoints.conversion.DTYPES
DEFAULT_MAX_SHARD_GB = 5.0                        # = checkpoints.hf.DEFAULT_MAX_SHARD_BYTES

# `synthesize`: its gin file, and flag -> the macro it sets when given.
SYNTHESIZE_GIN = "experiments/ipt/synthesize.gin"
SYNTHESIZE_FLAG_MACROS = {
    "rounds": "ROUNDS",
    "max_new_tokens": "MAX_NEW_TOKENS",
    "context_length": "CONTEXT_LENGTH",
    "batch_size": "BATCH_SIZE",
    "documents_per_shard": "DOCUMENTS_PER_SHARD",
}
SYNTHESIZE_FORMATS = ("auto", "jsonl", "text", "tfds")  # = synthesis.corpus.FORMATS

SWEEPS = ("flan-holdout",)
LAUNCHERS = ("auto", "subprocess", "in_process")


def common(parser: argparse.ArgumentParser) -> None:
  """Flags every command takes (besides the gin and multi-host ones in cli/__init__.py)."""
  parser.add_argument("--verbose", action="store_true",
                      help="Show every library log line and warning (TensorFlow/XLA, absl, "
                           "seqio) on the console instead of only in the command's log file.")


def train(parser: argparse.ArgumentParser) -> None:
  # Everything else is configured through gin.
  parser.add_argument("--force", action="store_true",
                      help="Take over MODEL_DIR from another trainer's lease; only when you are "
                           "sure that run is gone (e.g. its VM was deleted).")


def gin_only(parser: argparse.ArgumentParser) -> None:
  del parser  # eval and symbol-eval are configured through gin only.


def infer(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--input_file", required=True,
                      help="JSON lines with \"inputs\" (and \"targets\" to score), or TSV.")
  parser.add_argument("--output_file", required=True,
                      help="Where to write results: JSON lines, or TSV if it ends in .tsv.")
  parser.add_argument("--mode", choices=INFER_MODES, default="predict",
                      help="predict: decode outputs; score: log-likelihood of the targets.")
  parser.add_argument("--input_format", choices=INFER_FORMATS, default="auto",
                      help="auto: TSV for *.tsv, JSON lines otherwise.")
  parser.add_argument("--skip_bad_lines", action="store_true",
                      help="Leave malformed lines out (each is reported) instead of stopping.")
  parser.add_argument("--resume", action="store_true",
                      help="Keep the complete results already in --output_file (from a run "
                           "that stopped) and compute only the examples after them.")


def select(parser: argparse.ArgumentParser) -> None:
  defaults = f"default: {SELECT_GIN}"
  parser.add_argument("--model_dir", required=True,
                      help="Training run directory holding checkpoint_<step> directories.")
  parser.add_argument("--mixture", default=None,
                      help=f"seqio task or mixture to select on ({defaults}: "
                           f"{SELECT_DEFAULT_MIXTURE}).")
  parser.add_argument("--split", default=None, help=f"Split of its tasks ({defaults}: test).")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="Global eval batch size, a multiple of the data-parallel size "
                           f"({defaults}: 32).")
  parser.add_argument("--inputs_length", type=int, default=None,
                      help="Input length in tokens (few-shot prompts are built to fit 1024).")
  parser.add_argument("--targets_length", type=int, default=None,
                      help="Decoding length in tokens: room for the chain of thought "
                           f"({defaults}: 256).")
  parser.add_argument("--num_examples", type=int, default=None,
                      help="Evaluate only the first N examples of each task.")
  parser.add_argument("--steps", default=None,
                      help="Comma-separated checkpoint steps to consider (default: all).")
  parser.add_argument("--output_dir", default=None,
                      help="Where reports go (default: MODEL_DIR/selection).")
  parser.add_argument("--module", default=None,
                      help="Module to import for task registrations "
                           f"({defaults}: tasks_registry).")
  parser.add_argument("--num_partitions", type=int, default=None,
                      help=f"Model-parallel partitions of the eval mesh ({defaults}: 1).")


def sweep(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("sweep", choices=SWEEPS,
                      help="flan-holdout: FLAN leave-one-cluster-out, one train + zero-shot "
                           "eval per held-out cluster, then an aggregate report.")
  parser.add_argument("--model_dir_root", required=True,
                      help="Each cluster trains in <root>/holdout_<cluster>; the aggregate "
                           "report goes to <root>/sweep_report.{md,json,png}.")
  parser.add_argument("--clusters", action="append", default=[],
                      help="Comma-separated held-out clusters (repeatable); default: all of "
                           "the recipe's clusters.")
  parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                      help="Print every train/eval command line; run nothing.")
  parser.add_argument("--force", action="store_true",
                      help="Rerun clusters whose zero-shot results already exist.")
  parser.add_argument("--task_prefix", default=None,
                      help="Registry prefix of the copy to use (default: the recipe's, 'flan_'), "
                           "e.g. a byte-vocabulary copy for CPU smoke runs "
                           "(flan.register(vocabulary, prefix)).")
  parser.add_argument("--task_module", default=None,
                      help="Module that registers the --task_prefix copy; imported here and "
                           "as MIXTURE_OR_TASK_MODULE by every run.")
  parser.add_argument("--train_binding", action="append", default=[],
                      help="Gin binding KEY=VALUE for the train runs only (e.g. of a "
                           "configurable eval does not import).")
  parser.add_argument("--eval_binding", action="append", default=[],
                      help="Gin binding KEY=VALUE for the eval runs only.")
  parser.add_argument("--launcher", choices=LAUNCHERS, default="auto",
                      help="subprocess: one `python -m instruct_jax` per run (default on a "
                           "single host); in_process: in this process, gin cleared between "
                           "runs (chosen by auto inside a multi-process job).")


def bench(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--mode", choices=("train", "decode", "compile", "input"),
                      default="train",
                      help="train: the train step; decode: greedy and beam-search decoding "
                           "with and without the KV cache; compile: a table of train-step "
                           "compile time vs depth (BENCH_COMPILE_SIZES) with and without "
                           "layer scanning; input: examples/s and tokens/s of the input "
                           "pipeline of BENCH_MIXTURES, uncached and cached (BENCH_CACHE_DIR), "
                           "next to the train step's consumption.")
  for flag, name in BENCH_FLAG_MACROS.items():
    parser.add_argument(f"--{flag}", type=int, default=None,
                        help=f"Shortcut for --gin.{name}=N (runs/bench.gin).")
  parser.add_argument("--decode_methods", default=None,
                      help="Shortcut for --gin.BENCH_DECODE_METHODS: comma-separated subset "
                           "of greedy,beam.")
  parser.add_argument("--against", choices=BENCH_AGAINST, default=None,
                      help="Shortcut for --gin.BENCH_AGAINST: with --mode=train or decode, "
                           "also run the same model and weights in transformers (PyTorch, "
                           "from the test extra), alternating with ours, and print both "
                           "rates and their ratio.")


def convert(parser: argparse.ArgumentParser) -> None:
  direction = parser.add_mutually_exclusive_group(required=True)
  direction.add_argument("--from", dest="from_format", choices=("hf", "t5x"),
                         help="Import a Hugging Face or t5x checkpoint into our format.")
  direction.add_argument("--to", dest="to_format", choices=("hf",),
                         help="Export any checkpoint load_params reads to Hugging Face.")
  parser.add_argument("--input", required=True, help="Checkpoint directory (local or gs://).")
  parser.add_argument("--output", required=True, help="Directory to write (local or gs://).")
  parser.add_argument("--dtype", default="float32", choices=EXPORT_DTYPES,
                      help="--to hf: dtype of the written safetensors.")
  parser.add_argument("--max_shard_gb", type=float, default=DEFAULT_MAX_SHARD_GB,
                      help="--to hf: split safetensors into files of at most this size.")
  parser.add_argument("--overwrite", action="store_true",
                      help="Replace --output if it already exists.")


def synthesize(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--input", action="append", default=[], required=True,
                      help="Corpus files (repeatable; globs allowed): JSON lines with a text "
                           "field, or plain text with one document per blank-line-separated "
                           "block; or a TFDS dataset name with --input_format=tfds.")
  parser.add_argument("--input_format", choices=SYNTHESIZE_FORMATS, default="auto",
                      help="auto: JSON lines for *.jsonl / *.json / *.ndjson, text otherwise.")
  parser.add_argument("--text_field", default="text",
                      help="Field holding the document (JSON lines and TFDS).")
  parser.add_argument("--tfds_split", default="train", help="--input_format=tfds: the split.")
  parser.add_argument("--tfds_data_dir", default=None,
                      help="--input_format=tfds: the TFDS data directory.")
  parser.add_argument("--output_dir", required=True,
                      help="Where shards and manifest.json go; rerun the same command into it "
                           "to resume a stopped job.")
  for flag, name in SYNTHESIZE_FLAG_MACROS.items():
    parser.add_argument(f"--{flag}", type=int, default=None,
                        help=f"Shortcut for --gin.{name}=N ({SYNTHESIZE_GIN}).")


def cache(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--tasks", default=None,
                      help="Comma-separated regexes; tasks whose whole name matches one are "
                           "cached (or give --mixture).")
  parser.add_argument("--mixture", default=None,
                      help="Cache every task of this seqio mixture (or task).")
  parser.add_argument("--exclude_tasks", default=None,
                      help="Comma-separated regexes of task names to leave out, e.g. "
                           "'.*_few_shot'.")
  parser.add_argument("--output_cache_dir", required=True,
                      help="Cache root (local or gs://); train with --gin.CACHE_DIR set to it.")
  parser.add_argument("--module", default="tasks_registry",
                      help="Module whose import registers the tasks (also imported by remote "
                           "Beam workers). Default: tasks_registry.")
  parser.add_argument("--overwrite", action="store_true",
                      help="Rebuild tasks already cached under --output_cache_dir.")
  parser.add_argument("--min_shards", type=int, default=64,
                      help="Fewest TFRecord files per split (more files shuffle better).")
  parser.add_argument("--tfds_data_dir", default=None,
                      help="TFDS data directory to read the tasks' sources from.")
  parser.add_argument("pipeline_options", nargs=argparse.REMAINDER,
                      help="After --: Apache Beam pipeline options, e.g. -- "
                           "--runner=DataflowRunner --project=P --region=R "
                           "--temp_location=gs://B/tmp (default: the DirectRunner).")


def prepare(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--mixture", required=True,
                      help="seqio mixture (or task) whose TFDS datasets to build.")
  parser.add_argument("--module", default="tasks_registry",
                      help="Module whose import registers it. Default: tasks_registry.")
  parser.add_argument("--dry_run", action="store_true",
                      help="Only list each dataset's state (ready / to build / manual).")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data directory (default: the tasks' own, else TFDS's).")
  parser.add_argument("--manual_dir", default=None,
                      help="Directory holding the files of manual-download datasets.")


def inspect(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--mixture", required=True, help="seqio mixture (or task) to describe.")
  parser.add_argument("--module", default="tasks_registry",
                      help="Module whose import registers it. Default: tasks_registry.")
  parser.add_argument("--split", default="train", help="Split to count and sample.")
  parser.add_argument("--num_examples", type=int, default=2,
                      help="Examples shown per task (0: only the table).")
  parser.add_argument("--cache_dir", default=None,
                      help="Where `instruct-jax cache` wrote caches: counts and samples of "
                           "cached tasks are read from them.")


ADD_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "train": train,
    "bench": bench,
    "convert": convert,
    "eval": gin_only,
    "infer": infer,
    "select": select,
    "symbol-eval": gin_only,
    "sweep": sweep,
    "cache": cache,
    "prepare": prepare,
    "inspect": inspect,
    "synthesize": synthesize,
}
