"""Where training numbers go: TensorBoard (clu writers), MODEL_DIR/metrics.jsonl, the console.

Only process 0 writes files; every process may print. Scalars arrive as plain
Python floats so nothing here touches devices.
"""
import datetime
import json
import os
import time
from typing import Mapping, Optional

from absl import logging
from clu import metric_writers
import jax
import tensorflow as tf

from instruct_jax.checkpoints import layout


def drop_rows_after(path: str, step: int) -> int:
  """Removes the rows of a metrics.jsonl after `step`; returns how many went.

  A run killed after logging steps it never checkpointed trains them again on
  resume; without this the file would hold two rows for each of them. Lines a
  kill cut short are dropped too. Rewritten to a temporary file and renamed, so
  a second kill leaves the old or the new file, never half of one.
  """
  if not tf.io.gfile.exists(path):
    return 0
  with tf.io.gfile.GFile(path) as f:
    lines = f.read().splitlines()
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
      if int(row["step"]) <= step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      pass  # cut short by a kill, or not a row
  dropped = len(lines) - len(kept)
  if dropped:
    layout.write_atomically(path, "".join(line + "\n" for line in kept))
  return dropped


class MetricsReporter:
  """Writes the same scalars to TensorBoard and a JSON-lines log, and a progress line."""

  def __init__(self, model_dir: str, total_steps: int, subdir: str = "train",
               resume_step: Optional[int] = None):
    """`resume_step`: the step training restarts from; later rows of metrics.jsonl are dropped."""
    self._is_chief = jax.process_index() == 0
    self._total_steps = total_steps
    self._writer = metric_writers.create_default_writer(
        os.path.join(model_dir, subdir), just_logging=not self._is_chief, asynchronous=False)
    self._jsonl_path = os.path.join(model_dir, layout.METRICS_FILE)
    if self._is_chief:
      tf.io.gfile.makedirs(model_dir)
      if resume_step is not None:
        dropped = drop_rows_after(self._jsonl_path, resume_step)
        if dropped:
          logging.info("Dropped %d row(s) after step %d from %s: they are trained again.",
                       dropped, resume_step, self._jsonl_path)
    self._last_time: Optional[float] = None
    self._last_step: Optional[int] = None
    self._start_time = time.time()

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records scalars for `step` in TensorBoard and metrics.jsonl."""
    scalars = {k: float(v) for k, v in scalars.items()}
    self._writer.write_scalars(step, scalars)
    self._writer.flush()
    if self._is_chief:
      record = {"step": int(step), "time": time.time(), **scalars}
      with tf.io.gfile.GFile(self._jsonl_path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def restart_clock(self, step: int) -> None:
    """The next timing() measures from now and `step`: compilation and evals stay out."""
    self._last_time, self._last_step = time.time(), step

  def timing(self, step: int, tokens_per_step: int) -> dict[str, float]:
    """Throughput since the previous call or restart_clock (steps/s, tokens/s, ETA in s)."""
    now = time.time()
    out = {}
    if self._last_time is not None and step > self._last_step:
      steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
      out = {
          "timing/steps_per_second": steps_per_sec,
          "timing/tokens_per_second": steps_per_sec * tokens_per_step,
          "timing/eta_seconds": (self._total_steps - step) / steps_per_sec,
      }
    self._last_time, self._last_step = now, step
    return out

  def print_progress(self, step: int, scalars: Mapping[str, float]) -> None:
    """`step 50/400 | loss/token 2.3114 | acc 0.211 | 1,986 tokens/s | ...`.

    The headline is the per-token cross-entropy, comparable across batch sizes
    and lengths; the summed loss the optimizer sees stays in metrics.jsonl.
    """
    parts = [f"step {step}/{self._total_steps}"]
    if "cross_ent_loss_per_token" in scalars:
      parts.append(f"loss/token {scalars['cross_ent_loss_per_token']:.4f}")
    elif "loss" in scalars:
      parts.append(f"loss {scalars['loss']:.4g}")
    if "accuracy" in scalars:
      parts.append(f"acc {scalars['accuracy']:.3f}")
    if "timing/tokens_per_second" in scalars:
      parts.append(f"{scalars['timing/tokens_per_second']:,.0f} tokens/s")
      parts.append(f"{scalars['timing/steps_per_second']:.2f} steps/s")
      eta = datetime.timedelta(seconds=int(scalars["timing/eta_seconds"]))
      parts.append(f"ETA {eta}")
    line = " | ".join(parts)
    logging.info(line)
    if self._is_chief:
      print(line, flush=True)

  def print_eval(self, step: int, scalars: Mapping[str, float]) -> None:
    """One line per evaluated task: `eval step N | task: loss 1.23, accuracy 0.45`."""
    by_task: dict[str, list[str]] = {}
    for key, value in sorted(scalars.items()):
      _, task, metric = key.split("/", 2) if key.count("/") >= 2 else ("", key, "")
      by_task.setdefault(task, []).append(f"{metric} {value:.4g}" if metric else f"{value:.4g}")
    for task, values in by_task.items():
      line = f"eval step {step} | {task}: {', '.join(values)}"
      logging.info(line)
      if self._is_chief:
        print(line, flush=True)

  def close(self) -> None:
    self._writer.close()
