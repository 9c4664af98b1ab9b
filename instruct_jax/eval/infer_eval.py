"""Decoding / scoring evaluation during training: trainer.train's `infer_eval_fn` (gin).

The hook evaluates the params the trainer holds through the same EvalSession
as `instruct-jax eval`, so a step evaluated during training and the same
checkpoint evaluated afterwards use the same evaluator settings and seeds.
"""
from collections.abc import Callable, Mapping
from typing import Any, Optional

from instruct_jax.checkpoints import layout
from instruct_jax.data import pipeline
from instruct_jax.eval import session as session_lib
from instruct_jax.models import decoding


class InferEval:
  """Called as infer_eval(trainer, params, step) every EVAL_PERIOD steps.

  Returns {"inference_eval/<task>/<metric>": value} scalars for the trainer to
  log and writes the same files as `evaluate` under model_dir/inference_eval.
  The session (and its seqio.Evaluator with the cached eval data) is built on
  the first call, from the trainer's model and partitioner.
  """

  def __init__(self, mixture_or_task_name: str,
               task_feature_lengths: Optional[Mapping[str, int]] = None,
               batch_size: int = 32, split: str = "validation",
               decode_cfg: Optional[decoding.DecodeConfig] = None,
               model_dir: Optional[str] = None, num_examples: Optional[int] = None,
               use_cached: bool = False, module: Optional[str] = None, seed: int = 0,
               cluster_of: Optional[Callable[[str], str]] = None):
    self.mixture_or_task_name = mixture_or_task_name
    self.task_feature_lengths = task_feature_lengths
    self.batch_size = batch_size
    self.split = split
    self.decode_cfg = decode_cfg
    self.output_dir = layout.eval_dir(model_dir) if model_dir else None
    self.num_examples = num_examples
    self.use_cached = use_cached
    self.module = module
    self.seed = seed
    self.cluster_of = cluster_of
    self._session: Optional[session_lib.EvalSession] = None

  def __call__(self, trainer: Any, params: Any, step: int) -> dict[str, float]:
    if self._session is None:
      if self.module:
        pipeline.import_registry_module(self.module)
      self._session = session_lib.EvalSession(trainer.model, trainer.partitioner,
                                              self.batch_size, self.decode_cfg, self.seed)
    task_metrics = self._session.evaluate(
        self.mixture_or_task_name, self.split, self.task_feature_lengths,
        log_dir=self.output_dir, num_examples=self.num_examples, use_cached=self.use_cached,
        params=params, step=step)
    if self.output_dir:
      self._session.write_results(self.output_dir, task_metrics, step, self.cluster_of)
    return {f"{layout.EVAL_SUBDIR}/{task}/{name}": value
            for task, values in task_metrics.items() for name, value in values.items()}
