"""Runs a model's predict / score over tf.data datasets in fixed-size, mesh-sharded batches.

Every evaluation client (the eval session, `infer`) feeds its examples through
one ModelRunner, so batching, padding, sharding and the decoding rng are the
same everywhere. Multi-host: every process feeds the same global batches and
gets the outputs back replicated.
"""
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional

import jax
import numpy as np
import tensorflow as tf

from instruct_jax.models import decoding
from instruct_jax.train import partitioning

Progress = Callable[[int], None]


def _host_value(x: jax.Array) -> np.ndarray:
  """A replicated global array as numpy on every process."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(x.addressable_shards[0].data)


def trim_at_eos(tokens: np.ndarray, eos_id: int) -> list[int]:
  """Tokens up to and including the first EOS (all non-padding tokens if none)."""
  tokens = [int(t) for t in tokens]
  if eos_id in tokens:
    return tokens[:tokens.index(eos_id) + 1]
  while tokens and tokens[-1] == 0:
    tokens.pop()
  return tokens


class ModelRunner:
  """Runs a model's predict / score over tf.data datasets in fixed-size sharded batches.

  Datasets hold (index, features) elements, as seqio.Evaluator's enumerated
  model datasets do; results come back as (index, output) pairs. The last
  batch is padded with all-zero rows (dropped from the results), so one
  compiled program serves every batch of a given feature length. batch_size is
  global and must be a multiple of the data-parallel size.
  """

  def __init__(self, model: Any, partitioner: partitioning.Partitioner, param_shardings: Any,
               batch_size: int, decode_cfg: Optional[decoding.DecodeConfig] = None,
               seed: int = 0):
    data_parallel = partitioner.data_parallel_size
    if batch_size < 1 or batch_size % data_parallel:
      suggestion = max(data_parallel, batch_size // data_parallel * data_parallel)
      raise ValueError(f"Eval batch size {batch_size} must be a positive multiple of the "
                       f"data-parallel size {data_parallel} (rows are split over it); "
                       f"use e.g. {suggestion}.")
    self.model = model
    self.partitioner = partitioner
    self.batch_size = batch_size
    self.decode_cfg = (decode_cfg or decoding.DecodeConfig()).for_vocabulary(
        model.output_vocabulary)
    # The decoding rng (sampling only): batch i decodes with fold_in(rng, i).
    self.rng = jax.random.PRNGKey(seed)
    batch_sharding = partitioner.batch_sharding
    replicated = partitioner.replicated
    self._predict = jax.jit(
        lambda params, batch, rng: model.predict_batch(params, batch, self.decode_cfg, rng),
        in_shardings=(param_shardings, batch_sharding, replicated),
        out_shardings=(replicated, replicated))
    self._score = jax.jit(model.score_batch, in_shardings=(param_shardings, batch_sharding),
                          out_shardings=replicated)

  def _global_batches(self, dataset: tf.data.Dataset):
    """(indices, number of real rows, global batch dict) for each padded batch."""
    for indices, features in dataset.batch(self.batch_size).as_numpy_iterator():
      real = len(indices)
      batch = {}
      for name, value in features.items():
        value = np.asarray(value)
        if value.ndim != 2 or not np.issubdtype(value.dtype, np.integer):
          continue  # Only [rows, length] token features reach the model.
        padded = np.zeros((self.batch_size,) + value.shape[1:], np.int32)
        padded[:real] = value
        batch[name] = jax.make_array_from_callback(
            padded.shape, self.partitioner.batch_sharding,
            lambda index, padded=padded: padded[index])
      yield indices, real, batch

  def predict_batches(self, params: Any, dataset: tf.data.Dataset
                      ) -> Iterator[list[tuple[int, np.ndarray, float]]]:
    """predict's results one global batch at a time, as soon as each is decoded.

    Batch i decodes with fold_in(rng, i), so streaming callers sample exactly
    what `predict` would.
    """
    with self.partitioner.activation_context():
      for number, (indices, real, batch) in enumerate(self._global_batches(dataset)):
        tokens, scores = self._predict(params, batch, jax.random.fold_in(self.rng, number))
        tokens, scores = _host_value(tokens), _host_value(scores)
        yield [(int(indices[row]), tokens[row], float(scores[row])) for row in range(real)]

  def predict(self, params: Any, dataset: tf.data.Dataset,
              progress: Optional[Progress] = None) -> list[tuple[int, np.ndarray, float]]:
    """(index, output token ids [max_decode_length], decode score) for every example.

    Token rows keep their full width (0 after EOS), as seqio expects; see
    trim_at_eos.
    """
    return _collect(self.predict_batches(params, dataset), progress)

  def score_batches(self, params: Any, dataset: tf.data.Dataset
                    ) -> Iterator[list[tuple[int, float]]]:
    """score's results one global batch at a time."""
    with self.partitioner.activation_context():
      for indices, real, batch in self._global_batches(dataset):
        scores = _host_value(self._score(params, batch))
        yield [(int(indices[row]), float(scores[row])) for row in range(real)]

  def score(self, params: Any, dataset: tf.data.Dataset,
            progress: Optional[Progress] = None) -> list[tuple[int, float]]:
    """(index, sum of target log-likelihoods) for every example."""
    return _collect(self.score_batches(params, dataset), progress)

  def seqio_fns(self, params: Any) -> dict[str, Callable[..., Any]]:
    """predict_fn / score_fn keyword arguments for seqio.Evaluator.evaluate."""

    def predict_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      return [(index, tokens) for index, tokens, _ in self.predict(params, dataset)]

    def score_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      return self.score(params, dataset)

    return {"predict_fn": predict_fn, "score_fn": score_fn}


def _collect(batches: Iterable[list], progress: Optional[Progress]) -> list:
  """All batches' results in one list, reporting the running count to `progress`."""
  results = []
  for batch_results in batches:
    results.extend(batch_results)
    if progress is not None:
      progress(len(results))
  return results
