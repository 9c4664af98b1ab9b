"""The training loop: compiled sharded steps, microbatches, train-eval, checkpoints, signals.

`Trainer` owns the compiled functions for one (model, optimizer, mesh);
`train()` is the gin entry point (`trainer.train` in gin_configs/runs/*.gin)
that wires data, checkpoints and metrics around it.
"""
import dataclasses
import importlib
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio

from instruct_jax import stop_signals
from instruct_jax.checkpoints import adafactor_carry_over
from instruct_jax.checkpoints import layout
from instruct_jax.checkpoints import params_io
from instruct_jax.checkpoints import run_checkpointer
from instruct_jax.data import pipeline
from instruct_jax.errors import ActionableError
from instruct_jax.models import api
from instruct_jax.train import metrics_writer
from instruct_jax.train import partitioning
from instruct_jax.train import state as state_lib
from instruct_jax.train.state import TrainState

Batch = Mapping[str, jax.Array]


class NonFiniteLossError(ActionableError, RuntimeError):
  """Raised when a step produces a NaN/inf loss or gradient; nothing is saved after it."""


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  save_period: int = 1000
  keep: Optional[int] = None
  async_save: bool = True


class Trainer:
  """Compiled, sharded train and eval steps for one model, optimizer and mesh."""

  def __init__(self,
               model: api.Model,
               optimizer: optax.GradientTransformation,
               partitioner: partitioning.Partitioner,
               input_shapes: Mapping[str, Sequence[int]],
               num_microbatches: Optional[int] = None,
               random_seed: int = 0):
    self.model = model
    self.optimizer = optimizer
    self.partitioner = partitioner
    self.num_microbatches = num_microbatches or 1
    self._input_shapes = {k: tuple(v) for k, v in input_shapes.items()}
    batch_size = next(iter(self._input_shapes.values()))[0]
    if batch_size % (self.num_microbatches * partitioner.data_parallel_size):
      raise ValueError(
          f"BATCH_SIZE={batch_size} must be divisible by num_microbatches "
          f"({self.num_microbatches}) x data-parallel devices "
          f"({partitioner.data_parallel_size}).")
    self._dropout_rng = jax.random.PRNGKey(random_seed)

    abstract_params, param_shardings, boxed_params = state_lib.abstract_params(
        model, partitioner, self._input_shapes)
    abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
    self.state_shardings = TrainState(
        step=partitioner.replicated,
        params=param_shardings,
        opt_state=partitioner.optimizer_state_shardings(abstract_opt_state, boxed_params))
    abstract_state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32),
                                params=abstract_params, opt_state=abstract_opt_state)
    self.abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract_state, self.state_shardings)

    batch_sharding = partitioner.batch_sharding
    self._jit_init = jax.jit(self._init_state, out_shardings=self.state_shardings)
    self._jit_from_params = jax.jit(self._state_from_params,
                                    in_shardings=(self.state_shardings.params,),
                                    out_shardings=self.state_shardings)
    self._jit_train_step = jax.jit(
        self._train_step,
        in_shardings=(self.state_shardings, batch_sharding),
        out_shardings=(self.state_shardings, partitioner.replicated),
        donate_argnums=(0,))
    self._jit_eval_step = jax.jit(
        self._eval_step,
        in_shardings=(self.state_shardings.params, batch_sharding),
        out_shardings=partitioner.replicated)

  # ---- state creation -------------------------------------------------------------

  @property
  def abstract_params(self) -> Any:
    return self.abstract_state.params

  def init_state(self, seed: int) -> TrainState:
    """Fresh parameters from `seed`, laid out with the state shardings."""
    with self.partitioner.activation_context():
      return self._jit_init(jax.random.PRNGKey(seed))

  def state_from_params(self, params: Any) -> TrainState:
    """A step-0 state around given (e.g. pretrained) params with fresh optimizer state."""
    with self.partitioner.activation_context():
      return self._jit_from_params(params)

  def _init_state(self, rng):
    params = nn.meta.unbox(self.model.init_params(rng, self._input_shapes))
    return self._state_from_params(params)

  def _state_from_params(self, params):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.init(params))

  # ---- steps ----------------------------------------------------------------------

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
    with self.partitioner.activation_context():
      return self._jit_train_step(state, batch)

  def eval_step(self, params: Any, batch: Batch) -> dict:
    """Teacher-forced metric sums (loss summed over tokens) for one global batch."""
    with self.partitioner.activation_context():
      return self._jit_eval_step(params, batch)

  def compile_train_step(self, state: TrainState, batch: Batch) -> Any:
    """The compiled executable of the train step (for memory analysis and cost)."""
    with self.partitioner.activation_context():
      return self._jit_train_step.lower(state, batch).compile()

  def _train_step(self, state: TrainState, batch: Batch):
    rng = jax.random.fold_in(self._dropout_rng, state.step)
    grads, metrics = self._accumulate_gradients(state.params, batch, rng)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _accumulate_gradients(self, params, batch, rng):
    """Gradients of the whole batch, summed over microbatches in float32.

    The loss weights (normalisation folded in) are computed once on the whole
    batch and sliced with it, so microbatch losses are plain weighted sums and
    their gradients add up to exactly the full-batch gradient whatever the
    normalisation mode.
    """
    grad_fn = jax.value_and_grad(self.model.loss_fn, has_aux=True)
    weights = self.model.loss_weights(batch)
    if self.num_microbatches == 1:
      (_, metrics), grads = grad_fn(params, batch, rng, weights)
      return grads, metrics

    k = self.num_microbatches
    # Microbatch j takes rows j, j+k, j+2k, ... so each one stays spread over every
    # data-parallel device instead of living on a slice of them.
    stacked = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1),
        (dict(batch), weights))
    stacked = jax.lax.with_sharding_constraint(
        stacked, jax.sharding.NamedSharding(self.partitioner.mesh,
                                            jax.sharding.PartitionSpec(None, "data")))

    def body(carry, xs):
      grads_acc, metrics_acc = carry
      (micro, micro_weights), index = xs
      (_, metrics), grads = grad_fn(params, micro, jax.random.fold_in(rng, index),
                                    micro_weights)
      grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
      metrics_acc = jax.tree.map(jnp.add, metrics_acc, metrics)
      return (grads_acc, metrics_acc), None

    zero_grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    first_batch, first_weights = jax.tree.map(lambda x: x[0], stacked)
    metrics_shape = jax.eval_shape(
        lambda: self.model.loss_fn(params, first_batch, rng, first_weights)[1])
    zero_metrics = jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics_shape)
    (grads, metrics), _ = jax.lax.scan(body, (zero_grads, zero_metrics),
                                       (stacked, jnp.arange(k)))
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    return grads, metrics

  def _eval_step(self, params, batch):
    weights = self.model.loss_weights(batch, normalize=False)  # summed losses, as reported
    _, metrics = self.model.loss_fn(params, batch, None, weights)
    return metrics


# ---- the loop ---------------------------------------------------------------------


def _summarize(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Turns summed step metrics into per-token means for reporting."""
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  num_tokens = max(m.get("num_tokens", 0.0), 1.0)
  out = {"loss": m["loss"]}
  for key in ("z_loss", "cross_ent_loss", "grad_norm"):
    if key in m:
      out[key] = m[key]
  if "correct_tokens" in m:
    out["accuracy"] = m["correct_tokens"] / num_tokens
  if "cross_ent_loss" in m:
    out["cross_ent_loss_per_token"] = m["cross_ent_loss"] / num_tokens
  return out


def _check_finite(step: int, metrics: Mapping[str, Any]) -> None:
  values = {k: float(v) for k, v in jax.device_get(metrics).items()
            if k in ("loss", "grad_norm")}
  bad = {k: v for k, v in values.items() if not np.isfinite(v)}
  if bad:
    raise NonFiniteLossError(
        f"Non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} at step {step}. "
        f"Training stopped and this state was not saved; the last good checkpoint is "
        f"kept. Try a lower learning rate, float32 activations, or check the data.")


def tokens_per_step(input_shapes: Mapping[str, Sequence[int]]) -> int:
  """Input plus target token positions in one global batch (padding included).

  The tokens/s of training's timing and of `instruct-jax bench`, so both count alike.
  """
  return int(sum(np.prod(shape) for name, shape in input_shapes.items()
                 if name in ("encoder_input_tokens", "decoder_target_tokens")))


def _record_run_status(model_dir: str, total_steps: int, last_step: int, status: str,
                       error: Optional[str] = None) -> None:
  """Writes MODEL_DIR/run.json from process 0 only, so there is one writer."""
  if jax.process_index() == 0:
    layout.write_run_status(model_dir, layout.RunStatus(
        total_steps=int(total_steps), last_step=int(last_step), status=status,
        time=time.time(), error=error))


def _record_failure(model_dir: str, total_steps: int, error: BaseException) -> None:
  """run.json "failed", at the newest finished checkpoint (where a rerun resumes).

  Never raises: a failure to record must not hide the error that ended the run.
  """
  if jax.process_index() != 0:
    return
  text = str(error).strip()
  line = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
  try:
    saved = max((n for n, _ in layout.checkpoint_dirs(model_dir)), default=0)
    _record_run_status(model_dir, total_steps, saved, layout.FAILED, error=line)
  except Exception:  # pylint: disable=broad-except
    logging.exception("Could not record the failure in %s.", layout.RUN_STATUS_FILE)


def run_train_eval(trainer: Trainer, params: Any, dataset_cfg: pipeline.DatasetConfig,
                   feature_converter: seqio.FeatureConverter) -> dict[str, float]:
  """Teacher-forced loss and token accuracy on each task of the eval mixture."""
  task_or_mixture = pipeline.get_task_or_mixture(dataset_cfg.mixture_or_task_name)
  tasks = getattr(task_or_mixture, "tasks", [task_or_mixture])
  results = {}
  for task in sorted(tasks, key=lambda t: t.name):
    cfg = dataclasses.replace(dataset_cfg, mixture_or_task_name=task.name)
    total = None
    for batch in pipeline.eval_batches(cfg, jax.process_index(), jax.process_count(),
                                       feature_converter, trainer.partitioner.batch_sharding,
                                       global_batch_size=cfg.batch_size):
      metrics = trainer.eval_step(params, batch)
      total = metrics if total is None else jax.tree.map(jnp.add, total, metrics)
    if total is None:
      continue
    total = {k: float(v) for k, v in jax.device_get(total).items()}
    num_tokens = max(total["num_tokens"], 1.0)
    results[f"eval/{task.name}/loss"] = total["cross_ent_loss"] / num_tokens
    results[f"eval/{task.name}/accuracy"] = total["correct_tokens"] / num_tokens
  return results


def train(*,
          model: Any,
          train_dataset_cfg: pipeline.DatasetConfig,
          optimizer: optax.GradientTransformation,
          model_dir: str,
          total_steps: int,
          partitioner: partitioning.Partitioner,
          checkpoint_cfg: CheckpointConfig = CheckpointConfig(),
          train_eval_dataset_cfg: Optional[pipeline.DatasetConfig] = None,
          eval_period: Optional[int] = None,
          random_seed: int = 0,
          initial_checkpoint_path: Optional[str] = None,
          carry_adafactor_state: bool = False,
          num_microbatches: Optional[int] = None,
          log_period: int = 10,
          infer_eval_fn: Optional[Callable[["Trainer", Any, int], Mapping[str, float]]] = None
         ) -> TrainState:
  """Trains `model` on a seqio task/mixture until `total_steps`, resuming if possible.

  Restore precedence: the latest checkpoint in `model_dir` (full state and data
  position), else `initial_checkpoint_path` (params only, step 0), else fresh
  parameters from `random_seed`. With `carry_adafactor_state`, a t5x
  INITIAL_CHECKPOINT_PATH also seeds Adafactor's second moments. Every `eval_period` steps it runs teacher-forced
  eval on `train_eval_dataset_cfg` and calls `infer_eval_fn(trainer, params, step)`
  (decoding / scoring evaluation), logging the scalars each returns.
  MODEL_DIR/run.json (checkpoints.layout.RunStatus) says "running" from the
  restore on, then "finished", "stopped" (SIGTERM / SIGINT) or "failed", so
  tools need not guess a run's outcome from its checkpoints and logs.
  """
  for cfg in (train_dataset_cfg, train_eval_dataset_cfg):
    if cfg is not None and cfg.module:
      importlib.import_module(cfg.module)
  pipeline.get_task_or_mixture(train_dataset_cfg.mixture_or_task_name)  # fail early on typos

  feature_converter = model.feature_converter(pack=train_dataset_cfg.pack)
  input_shapes = pipeline.model_input_shapes(train_dataset_cfg, feature_converter)
  trainer = Trainer(model, optimizer, partitioner, input_shapes,
                    num_microbatches=num_microbatches, random_seed=random_seed)
  logging.info("Mesh %s; %d parameters.", partitioner.describe(),
               sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_params)))

  dataset = pipeline.get_dataset(train_dataset_cfg, jax.process_index(), jax.process_count(),
                                 feature_converter)
  data_iterator = pipeline.GlobalBatchIterator(dataset, partitioner.batch_sharding,
                                               global_batch_size=train_dataset_cfg.batch_size)
  checkpointer = run_checkpointer.Checkpointer(model_dir, checkpoint_cfg.save_period,
                                          keep=checkpoint_cfg.keep,
                                          async_save=checkpoint_cfg.async_save)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(trainer.abstract_state, data_iterator=data_iterator)
    logging.info("Resumed from %s at step %d.", model_dir, int(state.step))
  elif initial_checkpoint_path:
    params = params_io.load_params(initial_checkpoint_path, trainer.abstract_params)
    state = trainer.state_from_params(params)
    logging.info("Fine-tuning from params in %s.", initial_checkpoint_path)
    if carry_adafactor_state:
      opt_state, _ = adafactor_carry_over.load_adafactor_state(initial_checkpoint_path,
                                                               state.opt_state)
      state = state.replace(opt_state=opt_state)
  else:
    state = trainer.init_state(random_seed)

  eval_feature_converter = model.feature_converter(pack=False)
  reporter = metrics_writer.MetricsReporter(model_dir, total_steps)
  step_tokens = tokens_per_step(input_shapes)
  step = int(state.step)
  reporter.timing(step, step_tokens)
  pending = None  # (step, metrics) of the last dispatched step, checked one step late.
  _record_run_status(model_dir, total_steps, step, layout.RUNNING)
  try:
    try:
      with stop_signals.StopOnSignal(on_signal=lambda name: logging.warning(
          "%s received: will checkpoint and stop after the current step.", name)) as stop:
        while step < total_steps and not stop.requested:
          batch = next(data_iterator)
          state, metrics = trainer.train_step(state, batch)
          if pending is not None:
            _check_finite(*pending)
          step += 1
          pending = (step, metrics)

          is_last = step == total_steps
          if step % log_period == 0 or is_last:
            _check_finite(*pending)
            scalars = _summarize(metrics)
            scalars.update(reporter.timing(step, step_tokens))
            reporter.write(step, scalars)
            reporter.print_progress(step, scalars)
          if eval_period and (step % eval_period == 0 or is_last):
            scalars = {}
            if train_eval_dataset_cfg is not None:
              scalars.update(run_train_eval(trainer, state.params, train_eval_dataset_cfg,
                                            eval_feature_converter))
            if infer_eval_fn is not None:
              scalars.update(infer_eval_fn(trainer, state.params, step))
            if scalars:
              reporter.write(step, scalars)
              reporter.print_eval(step, scalars)
          if checkpointer.should_save(step) or is_last or stop.requested:
            _check_finite(*pending)
            checkpointer.save(step, state, data_iterator=data_iterator, force=True)
        if stop.requested:
          checkpointer.wait_until_finished()
          message = (f"Stopped by {stop.signal_name} at step {step}; checkpoint saved in "
                     f"{model_dir}. Run the same command again to resume.")
          logging.warning(message)
          if jax.process_index() == 0:
            print(message, flush=True)
    finally:
      checkpointer.wait_until_finished()
      checkpointer.close()
      reporter.close()
  except BaseException as e:
    _record_failure(model_dir, total_steps, e)
    raise
  _record_run_status(model_dir, total_steps, step,
                     layout.FINISHED if step >= total_steps else layout.STOPPED)
  return state
