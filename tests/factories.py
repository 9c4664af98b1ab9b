"""Tiny models and synthetic batches shared by the trainer-level tests."""
import numpy as np
import seqio
import tensorflow as tf

from instruct_jax.data import pipeline
from instruct_jax.models import decoder_only
from instruct_jax.models import encoder_decoder
from instruct_jax.models.networks import llama
from instruct_jax.models.networks import t5

INPUT_LENGTH = 16
TARGET_LENGTH = 8
VOCAB_SIZE = 384  # byte vocabulary (259 ids) rounded up to a multiple of 128


def tiny_t5_config(**overrides) -> t5.T5Config:
  """Small enough to compile in seconds; every dim divides 8 devices for FSDP tests."""
  fields = dict(vocab_size=VOCAB_SIZE, emb_dim=64, num_heads=4, num_encoder_layers=2,
                num_decoder_layers=2, head_dim=16, mlp_dim=128, dtype="float32")
  fields.update(overrides)
  return t5.T5Config(**fields)


def tiny_t5(**overrides) -> encoder_decoder.EncoderDecoderModel:
  vocab = seqio.ByteVocabulary()
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(tiny_t5_config(**overrides)), vocab, vocab)


def tiny_llama(**overrides) -> decoder_only.DecoderOnlyModel:
  """A Llama-family decoder with grouped-query attention (4 heads, 2 kv heads)."""
  fields = dict(vocab_size=VOCAB_SIZE, emb_dim=64, num_heads=4, num_kv_heads=2, num_layers=2,
                head_dim=16, mlp_dim=128, dtype="float32")
  fields.update(overrides)
  return decoder_only.DecoderOnlyModel(llama.Llama(llama.LlamaConfig(**fields)),
                                       seqio.ByteVocabulary())


def input_shapes(batch: int, input_length: int = INPUT_LENGTH,
                 target_length: int = TARGET_LENGTH) -> dict[str, tuple[int, int]]:
  return {"encoder_input_tokens": (batch, input_length),
          "decoder_input_tokens": (batch, target_length),
          "decoder_target_tokens": (batch, target_length),
          "decoder_loss_weights": (batch, target_length)}


def synthetic_batch(batch: int, seed: int = 0, input_length: int = INPUT_LENGTH,
                    target_length: int = TARGET_LENGTH) -> dict[str, np.ndarray]:
  """Unpacked encoder-decoder batch with random lengths and padding, like seqio's."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(3, 259, size=(batch, input_length)).astype(np.int32)
  targets = rng.integers(3, 259, size=(batch, target_length)).astype(np.int32)
  for row in range(batch):
    inputs[row, rng.integers(input_length // 2, input_length + 1):] = 0
    targets[row, rng.integers(2, target_length + 1):] = 0
  decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
  return {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
          "decoder_target_tokens": targets,
          "decoder_loss_weights": (targets > 0).astype(np.int32)}


def first_task_batch(model, inputs: list[str], targets: list[str], *, task_name: str,
                     input_length: int = 64, target_length: int = 64) -> dict[str, np.ndarray]:
  """The first batch (8 rows) of a seqio task over (inputs, targets) in the model's
  vocabulary, through the project's pipeline and the model's feature converter."""
  vocab = model.output_vocabulary
  seqio.TaskRegistry.add(
      task_name,
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"inputs": inputs, "targets": targets}), splits=["train"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)})
  try:
    cfg = pipeline.DatasetConfig(
        mixture_or_task_name=task_name,
        task_feature_lengths={"inputs": input_length, "targets": target_length},
        split="train", batch_size=8, shuffle=False, seed=0)
    dataset = pipeline.get_dataset(cfg, 0, 1, model.feature_converter(pack=False),
                                   repeat=False)
    return next(iter(dataset.as_numpy_iterator()))
  finally:
    seqio.TaskRegistry.remove(task_name)
