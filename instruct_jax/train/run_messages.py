"""What a training run tells its user: the start banner, the end-of-run summary.

Kept apart from the loop so the wording can be read (and tested) in one place.
Every function returns text; the trainer prints it on process 0.
"""
import dataclasses
import datetime
import os
from typing import Any, Mapping, Optional

from instruct_jax.checkpoints import layout

# T5Config / decoder config fields worth a glance, in this order, when the model has them.
_CONFIG_FIELDS = ("vocab_size", "emb_dim", "num_heads", "num_layers", "num_encoder_layers",
                  "num_decoder_layers", "head_dim", "mlp_dim")


def _count(n: float) -> str:
  for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if n >= size:
      return f"{n / size:.2f}{unit}"
  return f"{n:.0f}"


def _duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(round(seconds))))


def describe_model(model: Any, num_params: int) -> str:
  """`EncoderDecoderModel, T5Config(emb_dim=64, ...), 1.23M parameters`."""
  parts = [type(model).__name__]
  config = getattr(getattr(model, "module", None), "config", None)
  if dataclasses.is_dataclass(config):
    fields = ", ".join(f"{name}={getattr(config, name)}" for name in _CONFIG_FIELDS
                       if hasattr(config, name))
    parts.append(f"{type(config).__name__}({fields})")
  parts.append(f"{_count(num_params)} parameters")
  return ", ".join(parts)


def start_mode(resumed_step: Optional[int], initial_checkpoint_path: Optional[str]) -> str:
  if resumed_step is not None:
    return f"resuming from {layout.checkpoint_dir_name(resumed_step)}"
  if initial_checkpoint_path:
    return f"fine-tuning from {initial_checkpoint_path}"
  return "fresh start"


def banner(*, model_dir: str, model_line: str, mesh: Mapping[str, int], mixture: str,
           feature_lengths: Mapping[str, int], batch_size: int, total_steps: int,
           start: str, log_path: Optional[str]) -> str:
  """The lines printed once the run holds MODEL_DIR and its state is ready."""
  lengths = ", ".join(f"{k} {v}" for k, v in feature_lengths.items())
  rows = [("MODEL_DIR", model_dir), ("model", model_line),
          ("mesh", " x ".join(f"{axis} {size}" for axis, size in mesh.items())),
          ("data", f"{mixture} | lengths {lengths} | batch {batch_size} | {total_steps} steps")]
  if log_path:
    rows.append(("log", f"{log_path} (library messages; --verbose shows them here)"))
  return "\n".join([f"instruct-jax train: {start}",
                    *(f"  {name:<10} {value}" for name, value in rows)])


def finished_line(model_dir: str, step: int, total_steps: int) -> str:
  return (f"The run in {model_dir} already finished (step {step} of {total_steps}); "
          "nothing to do.")


def eval_command(config_path: str, checkpoint_path: str, mixture: str) -> str:
  """An `instruct-jax eval` command line for a checkpoint of a run, from its recorded config.

  The config record (config.gin) holds the model, the vocabulary and the task
  module of the run, so the command works from any directory.
  """
  return (f"instruct-jax eval --gin_file={config_path} --gin_file=runs/eval.gin "
          f"--gin.CHECKPOINT_PATH=\"'{checkpoint_path}'\" "
          f"--gin.MIXTURE_OR_TASK_NAME=\"'{mixture}'\"")


@dataclasses.dataclass
class RunOutcome:
  """What the summary reports of one launch that reached TOTAL_STEPS."""
  model_dir: str
  start_step: int
  step: int
  total_steps: int
  tokens_per_step: int
  seconds: float
  train: Mapping[str, float]                    # the last logged train scalars
  evals: Mapping[str, float]                    # the last eval scalars ("<kind>/<task>/<metric>")
  final_eval: Optional[str] = None              # the final_eval_fn's one-line result
  config_path: Optional[str] = None             # this launch's config record
  eval_mixture: Optional[str] = None            # what the next command evaluates
  log_path: Optional[str] = None


def _mean_by_metric(evals: Mapping[str, float],
                    prefix: str) -> dict[str, tuple[float, int]]:
  """{metric: (mean over tasks, number of tasks)} of `<prefix>/<task>/<metric>` scalars."""
  by_metric: dict[str, list[float]] = {}
  for key, value in evals.items():
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == prefix:
      by_metric.setdefault(parts[2], []).append(value)
  return {m: (sum(v) / len(v), len(v)) for m, v in sorted(by_metric.items())}


def summary(outcome: RunOutcome) -> str:
  """The end-of-run summary, ending with the command that evaluates the final checkpoint."""
  o = outcome
  steps = o.step - o.start_step
  tokens = steps * o.tokens_per_step
  lines = [f"Done: step {o.step} of {o.total_steps} ({steps} steps this launch, "
           f"{_count(tokens)} tokens) in {_duration(o.seconds)}."]
  if "cross_ent_loss_per_token" in o.train:
    train = f"loss/token {o.train['cross_ent_loss_per_token']:.4f}"
    if "accuracy" in o.train:
      train += f", token accuracy {o.train['accuracy']:.3f}"
    lines.append(f"  {'train':<11} {train}")
  for prefix, name in (("eval", "eval"), (layout.EVAL_SUBDIR, "infer eval")):
    means = _mean_by_metric(o.evals, prefix)
    if means:
      text = ", ".join(f"{metric} {mean:.4g}" for metric, (mean, _) in means.items())
      num_tasks = max(n for _, n in means.values())
      lines.append(f"  {name:<11} {text} (mean of {num_tasks} task(s))")
  if o.final_eval:
    lines.append(f"  {'final eval':<11} {o.final_eval}")
  checkpoint = layout.checkpoint_dir(o.model_dir, o.step)
  lines.append(f"  {'checkpoint':<11} {checkpoint}")
  lines.append(f"  {'metrics':<11} {os.path.join(o.model_dir, layout.METRICS_FILE)} "
               f"(TensorBoard: {os.path.join(o.model_dir, 'train')})")
  reports = layout.eval_dir(o.model_dir)
  if os.path.isdir(reports):
    lines.append(f"  {'reports':<11} {reports}")
  if o.log_path:
    lines.append(f"  {'log':<11} {o.log_path}")
  if o.config_path and o.eval_mixture:
    lines.append("Evaluate this checkpoint:")
    lines.append("  " + eval_command(o.config_path, checkpoint, o.eval_mixture))
  return "\n".join(lines)

