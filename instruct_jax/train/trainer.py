"""The training loop: compiled sharded steps, microbatches, train-eval, checkpoints, signals.

`Trainer` owns the compiled functions for one (model, optimizer, mesh);
`train()` is the gin entry point (`trainer.train` in gin_configs/runs/*.gin)
that wires data, checkpoints, metrics and the MODEL_DIR lease around it.
"""
import dataclasses
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import logging
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax
import seqio

from instruct_jax import errors
from instruct_jax import stop_signals
from instruct_jax.checkpoints import adafactor_carry_over
from instruct_jax.checkpoints import layout
from instruct_jax.checkpoints import lease as lease_lib
from instruct_jax.checkpoints import params_io
from instruct_jax.checkpoints import run_checkpointer
from instruct_jax.data import pipeline
from instruct_jax.errors import ActionableError
from instruct_jax.errors import RunStopped
from instruct_jax.models import api
from instruct_jax.train import metrics_writer
from instruct_jax.train import partitioning
from instruct_jax.train import run_messages
from instruct_jax.train import state as state_lib
from instruct_jax.train.state import TrainState

Batch = Mapping[str, jax.Array]


class NonFiniteLossError(ActionableError, RuntimeError):
  """Raised when a step produces a NaN/inf loss or gradient; nothing is saved after it."""


class DivergenceError(ActionableError, RuntimeError):
  """Raised when the gradient stays exactly zero: the model collapsed and cannot recover."""


@dataclasses.dataclass(frozen=True)
class FinalEvalResult:
  """What a `final_eval_fn` reports back: a line for the summary, the mixture it evaluated."""
  headline: str
  mixture_or_task_name: str


# final_eval_fn(trainer, params, step, initial_params): called once a launch reaches
# TOTAL_STEPS; initial_params() rebuilds the params training started from (same seed or
# INITIAL_CHECKPOINT_PATH). It prints and writes its own report.
FinalEvalFn = Callable[["Trainer", Any, int, Callable[[], Any]], FinalEvalResult]


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  save_period: int = 1000
  keep: Optional[int] = None
  async_save: bool = True
  # False: resuming restores the model and optimizer but not the data position (for a
  # position saved by a different input pipeline); the data starts from its beginning.
  restore_data_iterator: bool = True


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

  def train_step_jaxpr(self, state: TrainState, batch: Batch) -> Any:
    """The train step traced to a jaxpr (for benchmarks that inspect its operations)."""
    with self.partitioner.activation_context():
      return jax.make_jaxpr(self._jit_train_step)(state, batch)

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


def _check_step(pending: tuple[int, Mapping[str, Any]],
                checkpointer: run_checkpointer.Checkpointer) -> None:
  """The checks of a point that already waits for the device: finite metrics, failed saves.

  A background save that failed surfaces here (CheckpointSaveError) rather than a
  whole save period later, when the work since the last good checkpoint is lost anyway.
  """
  _check_finite(*pending)
  checkpointer.check_for_errors()


class _ZeroGradientGuard:
  """Counts logged steps whose gradient norm is exactly 0.0 in a row.

  A NaN check does not catch this failure: after a far too large update the
  activations saturate or die, the loss stops responding, every gradient is
  0.0, and training would go on for days without changing a parameter.
  """

  def __init__(self, patience: Optional[int], start_step: int):
    self.patience = patience or 0
    self.streak = 0
    self.last_good_step = start_step  # the last logged step that still had a gradient

  def update(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records one logged step; raises DivergenceError once the streak reaches patience."""
    if not self.patience or "grad_norm" not in scalars:
      return
    if scalars["grad_norm"] != 0.0:
      self.streak, self.last_good_step = 0, step
      return
    self.streak += 1
    if self.streak >= self.patience:
      raise DivergenceError(
          f"The gradient norm was exactly 0.0 for {self.streak} logged steps in a row (up "
          f"to step {step}; loss {scalars.get('loss', float('nan')):.6g}): the model "
          f"collapsed after step {self.last_good_step} (saturated or dead activations, "
          f"typically from a learning rate far too high) and its parameters would never "
          f"change again. Training stopped and saved nothing since. Lower the learning rate "
          f"(or lengthen the warmup) and start a fresh MODEL_DIR, or delete the checkpoints "
          f"from step {self.last_good_step} on and resume from an earlier one; "
          f"ZERO_GRAD_PATIENCE=None disables this check.")

  @property
  def suspect(self) -> bool:
    """Whether the latest logged steps had no gradient (their state is not worth saving)."""
    return self.streak > 0


def _host_state_bytes(abstract_state: Any) -> int:
  """Bytes of the state's distinct shards on this host: what its checkpoint writes."""
  total = 0
  for leaf in jax.tree.leaves(abstract_state):
    itemsize = np.dtype(leaf.dtype).itemsize
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
      total += int(np.prod(leaf.shape)) * itemsize
      continue
    indices = sharding.addressable_devices_indices_map(leaf.shape).values()
    distinct = {tuple((s.start, s.stop, s.step) for s in index) for index in indices}
    total += len(distinct) * int(np.prod(sharding.shard_shape(leaf.shape))) * itemsize
  return total


# First byte of a shared outcome: what process 0 raised.
_OUTCOME_OK, _OUTCOME_LEASE_HELD, _OUTCOME_OTHER = 0, 1, 2
_OUTCOME_BYTES = 4096


def _share_outcome(error: Optional[BaseException]) -> tuple[int, str]:
  """(kind, message) of process 0's error, on every process; single process: no collective."""
  if error is None:
    kind = _OUTCOME_OK
  else:
    kind = _OUTCOME_LEASE_HELD if isinstance(error, lease_lib.LeaseHeldError) else _OUTCOME_OTHER
  text = "" if error is None else f"{type(error).__name__}: {error}"
  if jax.process_count() == 1:
    return kind, text
  buffer = np.zeros(_OUTCOME_BYTES + 1, np.uint8)
  if jax.process_index() == 0:
    data = text.encode()[:_OUTCOME_BYTES]
    buffer[0] = kind
    buffer[1:1 + len(data)] = np.frombuffer(data, np.uint8)
  buffer = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
  return int(buffer[0]), bytes(buffer[1:]).rstrip(b"\0").decode(errors="replace")


def _on_process_0(model_dir: str, fn: Optional[Callable[[], None]]) -> None:
  """Runs `fn` (a lease operation) on process 0 and raises its error on every process.

  Only process 0 holds the lease, but all processes must stop together, or the
  others would wait forever in the next collective.
  """
  error = None
  if fn is not None:
    try:
      fn()
    except Exception as e:  # pylint: disable=broad-except
      error = e
  kind, text = _share_outcome(error)
  if error is not None:
    raise error
  if kind == _OUTCOME_LEASE_HELD:
    raise lease_lib.LeaseHeldError(text.split(": ", 1)[-1])
  if kind == _OUTCOME_OTHER:
    raise RuntimeError(f"Process 0 failed on the lease of {model_dir}: {text} (see its log).")


def _take_lease(model_dir: str, take_over: bool) -> Optional[lease_lib.RunLease]:
  """Process 0 acquires MODEL_DIR's lease (returned; None elsewhere); refused: raises everywhere."""
  lease = lease_lib.RunLease(model_dir, take_over=take_over) if jax.process_index() == 0 else None
  _on_process_0(model_dir, lease.acquire if lease is not None else None)
  return lease


def _heartbeat(model_dir: str, lease: Optional[lease_lib.RunLease]) -> None:
  """Renews the lease; LeaseHeldError on every process when another trainer took it over.

  Any other failure (a storage hiccup) only warns: the next log step retries, and
  a run must not die of it while it still holds the lease.
  """
  if lease is None and jax.process_count() == 1:
    return

  def beat():
    try:
      lease.heartbeat()
    except lease_lib.LeaseHeldError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Could not renew the lease %s (%s: %s); retrying at the next log step.",
                      lease.path, type(e).__name__, e)

  _on_process_0(model_dir, beat if lease is not None else None)


def _shut_down(checkpointer: Optional[run_checkpointer.Checkpointer],
               reporter: Optional[metrics_writer.MetricsReporter], failing: bool) -> None:
  """Finishes pending saves and closes the writers.

  While another error propagates, new errors are only logged, so the error
  that ended the run is the one reported (a failed save re-raises on every wait).
  """
  steps = []
  if checkpointer is not None:
    steps += [checkpointer.wait_until_finished, checkpointer.close]
  if reporter is not None:
    steps.append(reporter.close)
  errors = []
  for close in steps:
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  for error in errors if failing else errors[1:]:
    logging.warning("While shutting the run down: %s: %s", type(error).__name__, error)
  if errors and not failing:
    raise errors[0]


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
  try:
    saved = max((n for n, _ in layout.checkpoint_dirs(model_dir)), default=0)
    _record_run_status(model_dir, total_steps, saved, layout.FAILED,
                       error=errors.one_line(error))
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
          infer_eval_fn: Optional[Callable[["Trainer", Any, int], Mapping[str, float]]] = None,
          take_over_lease: bool = False,
          run_config: Optional[str] = None,
          zero_grad_patience: Optional[int] = 5,
          final_eval_fn: Optional[FinalEvalFn] = None,
          console_log: Optional[Callable[[str], Optional[str]]] = None,
         ) -> TrainState:
  """Trains `model` on a seqio task/mixture until `total_steps`, resuming if possible.

  Restore precedence: the latest checkpoint in `model_dir` (full state and data
  position), else `initial_checkpoint_path` (params only, step 0), else fresh
  parameters from `random_seed`. With `carry_adafactor_state`, a t5x
  INITIAL_CHECKPOINT_PATH also seeds Adafactor's second moments. Every `eval_period` steps it runs teacher-forced
  eval on `train_eval_dataset_cfg` and calls `infer_eval_fn(trainer, params, step)`
  (decoding / scoring evaluation), logging the scalars each returns.

  Only one trainer writes a MODEL_DIR: process 0 holds its lease
  (checkpoints.lease) for the whole run and a second launch raises LeaseHeldError
  unless `take_over_lease` (the CLI's --force). `run_config`, the resolved gin
  config, is recorded (config.gin, then config-2.gin, ...) only once the state
  was restored or initialised, so a launch that fails validation leaves the
  run's record alone. A failed background save stops the run at the next step
  (CheckpointSaveError); a gradient norm of exactly 0.0 for `zero_grad_patience`
  logged steps in a row (None or 0: never) stops it with DivergenceError.

  The console (process 0) gets a banner once the state is ready (MODEL_DIR,
  model, mesh, data, fresh start / fine-tuning / resuming), a progress line
  every `log_period` steps whose rate and ETA leave out the first step's
  compilation, and, once TOTAL_STEPS is reached, `final_eval_fn`'s report and a
  summary ending with an `instruct-jax eval` command for the final checkpoint.
  `console_log(model_dir)` (the CLI's console.move_log_into) is called once
  the run holds MODEL_DIR and returns where the command's log now is.

  MODEL_DIR/run.json (checkpoints.layout.RunStatus) says "running" from the
  restore on, then "finished" (the state is returned), "stopped" (SIGTERM /
  SIGINT: the checkpoint is saved and RunStopped raised; rerunning resumes) or
  "failed", so tools need not guess a run's outcome from its checkpoints and
  logs. A launch refused the lease writes nothing in MODEL_DIR.
  """
  launch_start = time.time()
  for cfg in (train_dataset_cfg, train_eval_dataset_cfg):
    if cfg is not None and cfg.module:
      pipeline.import_registry_module(cfg.module)
  pipeline.get_task_or_mixture(train_dataset_cfg.mixture_or_task_name)  # fail early on typos
  layout.check_same_mixture(model_dir, train_dataset_cfg.mixture_or_task_name)

  feature_converter = model.feature_converter(pack=train_dataset_cfg.pack)
  input_shapes = pipeline.model_input_shapes(train_dataset_cfg, feature_converter)
  trainer = Trainer(model, optimizer, partitioner, input_shapes,
                    num_microbatches=num_microbatches, random_seed=random_seed)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_params))
  logging.info("Mesh %s; %d parameters.", partitioner.describe(), num_params)
  chief = jax.process_index() == 0

  dataset = pipeline.get_dataset(train_dataset_cfg, jax.process_index(), jax.process_count(),
                                 feature_converter)
  data_iterator = pipeline.GlobalBatchIterator(dataset, partitioner.batch_sharding,
                                               global_batch_size=train_dataset_cfg.batch_size)

  # From here on MODEL_DIR is ours: every exit records its outcome in run.json.
  lease = _take_lease(model_dir, take_over_lease)
  log_path = console_log(model_dir) if console_log is not None else None
  checkpointer = reporter = None
  failing = True
  config_path = None
  try:
    try:
      checkpointer = run_checkpointer.Checkpointer(model_dir, checkpoint_cfg.save_period,
                                                   keep=checkpoint_cfg.keep,
                                                   async_save=checkpoint_cfg.async_save)
      latest_step = checkpointer.latest_step()
      resumed = latest_step is not None
      if resumed:
        # A finished run reads no more data: its position is not needed (nor checked).
        restore_data = checkpoint_cfg.restore_data_iterator and latest_step < total_steps
        state = checkpointer.restore(trainer.abstract_state,
                                     data_iterator=data_iterator if restore_data else None)
        logging.info("Resumed from %s at step %d.", model_dir, int(state.step))
        if not checkpoint_cfg.restore_data_iterator:
          logging.warning("Resumed at step %d without the saved data position "
                          "(RESTORE_DATA_ITERATOR=False): the data starts again from the "
                          "beginning of its stream, so examples seen before may be seen "
                          "again.", int(state.step))
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
      step = int(state.step)

      if resumed and step >= total_steps:
        line = run_messages.finished_line(model_dir, step, total_steps)
        logging.info(line)
        if chief:
          print(line, flush=True)  # the console's one line: why nothing ran
        _record_run_status(model_dir, total_steps, step, layout.FINISHED)
        failing = False
        return state

      start_step = step
      if chief:
        print(run_messages.banner(
            model_dir=model_dir, model_line=run_messages.describe_model(model, num_params),
            mesh=dict(partitioner.mesh.shape), mixture=train_dataset_cfg.mixture_or_task_name,
            feature_lengths=train_dataset_cfg.task_feature_lengths,
            batch_size=train_dataset_cfg.batch_size, total_steps=total_steps,
            start=run_messages.start_mode(step if resumed else None, initial_checkpoint_path),
            log_path=log_path), flush=True)
      if run_config is not None and chief:
        config_path = layout.record_config(model_dir, run_config)
        logging.info("Recorded this launch's config in %s.", config_path)
      checkpointer.check_free_space(_host_state_bytes(trainer.abstract_state))
      eval_feature_converter = model.feature_converter(pack=False)
      reporter = metrics_writer.MetricsReporter(model_dir, total_steps, resume_step=step)
      step_tokens = tokens_per_step(input_shapes)
      last_train, last_eval = {}, {}
      zero_grads = _ZeroGradientGuard(zero_grad_patience, step)
      pending = None  # (step, metrics) of the last dispatched step, checked one step late.
      _record_run_status(model_dir, total_steps, step, layout.RUNNING)
      with stop_signals.StopOnSignal(on_signal=lambda name: logging.warning(
          "%s received: will checkpoint and stop after the current step.", name)) as stop:
        while step < total_steps and not stop.requested:
          batch = next(data_iterator)
          step_start = time.time()
          state, metrics = trainer.train_step(state, batch)
          if pending is not None:
            _check_step(pending, checkpointer)
          step += 1
          pending = (step, metrics)
          if step == start_step + 1:
            # Rates and the ETA count from here: the first step is mostly compilation.
            jax.block_until_ready(metrics)
            reporter.restart_clock(step)
            line = f"step {step}: compiled and ran in {time.time() - step_start:.1f}s"
            logging.info(line)
            if chief:
              print(line, flush=True)

          is_last = step == total_steps
          if step % log_period == 0 or is_last:
            _check_step(pending, checkpointer)
            scalars = _summarize(metrics)
            scalars.update(reporter.timing(step, step_tokens))
            reporter.write(step, scalars)
            reporter.print_progress(step, scalars)
            zero_grads.update(step, scalars)
            last_train = scalars
            _heartbeat(model_dir, lease)
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
              last_eval = scalars
            reporter.restart_clock(step)  # the rate of training steps leaves evals out
          forced = is_last or stop.requested
          if checkpointer.should_save(step) or forced:
            _check_step(pending, checkpointer)
            if zero_grads.suspect and not forced:
              logging.warning("Not saving step %d: the gradient was exactly 0.0 at the last "
                              "%d logged step(s), a possible collapse.", step, zero_grads.streak)
            else:
              checkpointer.save(step, state, data_iterator=data_iterator, force=True)
      stopped = None
      if stop.requested and step < total_steps:
        checkpointer.wait_until_finished()
        stopped = (f"Stopped by {stop.signal_name} at step {step}; checkpoint saved in "
                   f"{model_dir}. Run the same command again to resume.")
        logging.warning(stopped)
      failing = False
    finally:
      _shut_down(checkpointer, reporter, failing)
    _record_run_status(model_dir, total_steps, step,
                       layout.FINISHED if stopped is None else layout.STOPPED)
  except lease_lib.LeaseHeldError:
    raise  # Another trainer took MODEL_DIR over: its run.json is not ours to write.
  except BaseException as e:
    _record_failure(model_dir, total_steps, e)
    raise
  finally:
    if lease is not None:
      lease.release()
  if stopped is not None:
    raise RunStopped(stopped)  # the CLI prints it and exits with EXIT_STOPPED

  final_eval = None
  if final_eval_fn is not None:
    def initial_params():
      if initial_checkpoint_path:
        return params_io.load_params(initial_checkpoint_path, trainer.abstract_params)
      return trainer.init_state(random_seed).params
    final_eval = final_eval_fn(trainer, state.params, step, initial_params)
  if chief:
    eval_mixture = (final_eval.mixture_or_task_name if final_eval is not None else
                    (train_eval_dataset_cfg or train_dataset_cfg).mixture_or_task_name)
    print(run_messages.summary(run_messages.RunOutcome(
        model_dir=model_dir, start_step=start_step, step=step, total_steps=total_steps,
        tokens_per_step=step_tokens, seconds=time.time() - launch_start, train=last_train,
        evals=last_eval, final_eval=final_eval.headline if final_eval is not None else None,
        config_path=config_path, eval_mixture=eval_mixture, log_path=log_path)), flush=True)
  return state
