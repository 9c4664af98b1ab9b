"""Synthesizer-tuning tasks: TFDS QA datasets -> concatenated examples, loss on pairs only."""
import functools
import re

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from instruct_jax.cli import gin_setup
from instruct_jax.data.ipt import pair_loss
from instruct_jax.data.ipt import qa_datasets
from instruct_jax.data.ipt import synthesizer_format as fmt
from instruct_jax.data.ipt import tuning_examples
from instruct_jax.models.networks import llama
from tasks_registry import registration
from tasks_registry.ipt import synthesizer_tuning

BYTES = seqio.ByteVocabulary()
SEQUENCE_LENGTH = 1024
MAX_CONTEXTS = 3
# One serialised context as byte ids spell it: no BOS id, so `<s>` is left out.
CONTEXT = re.compile(r" <CON> .*? </CON>\n\n", re.S)
ENCODE = functools.partial(synthesizer_tuning.marker_ids, BYTES)


@pytest.fixture(scope="module")
def mock_sequences():
  """Every source's train sequences under TFDS mock data, with a byte vocabulary."""
  with tfds.testing.mock_data(num_examples=6):
    mixture = synthesizer_tuning.register_synthesizer_tuning_tasks(
        BYTES, {"targets": SEQUENCE_LENGTH}, max_contexts=MAX_CONTEXTS,
        prefix="ipt_test_synth", mixture="ipt_test_synth_tuning")
    sequences = {}
    for source in qa_datasets.SOURCES:
      task = seqio.get_mixture_or_task(f"ipt_test_synth_{source.name}")
      sequences[source.name] = list(task.get_dataset(
          {"targets": SEQUENCE_LENGTH}, split="train", shuffle=False).as_numpy_iterator())
    assert {t.name for t in seqio.get_mixture_or_task(mixture).tasks} == {
        f"ipt_test_synth_{s.name}" for s in qa_datasets.SOURCES}
  yield sequences
  registration.remove_with_prefix("ipt_test_synth")


def marker_text(ids) -> str:
  """Byte ids back to serialised text; the EOS id is `</s>` (seqio's decode stops at it)."""
  pieces, current = [], []
  for i in list(ids) + [None]:
    if i in (BYTES.eos_id, None):
      pieces.append(BYTES.decode(current))
      current = []
    elif i != 0:
      current.append(int(i))
  return fmt.EOS.join(pieces)


def expected_roles(ids) -> np.ndarray:
  """Context from each example's start through ` </CON>` and the blank line, then pairs."""
  roles, text, in_context = [], "", True
  for i in ids:
    roles.append(pair_loss.ROLE_CONTEXT if in_context else pair_loss.ROLE_PAIR)
    if i == BYTES.eos_id:
      text, in_context = "", True
      continue
    text += BYTES.decode([int(i)])
    if in_context and text.endswith(" </CON>\n\n"):
      in_context = False
  return np.asarray(roles, np.int32)


def test_sources_render_in_the_format_with_loss_on_pairs_only(mock_sequences):
  # Random mock rows cannot give a valid answer letter (race, qasc); all others build.
  letter_keyed = {"race_high", "race_middle", "qasc"}
  assert len(qa_datasets.SOURCES) >= 8
  for name, sequences in mock_sequences.items():
    if name in letter_keyed:
      continue
    assert sequences, name
    contexts = 0
    for sequence in sequences:
      tokens = sequence["targets"]
      assert len(tokens) <= SEQUENCE_LENGTH
      assert tokens[-1] == BYTES.eos_id and 0 not in tokens
      text = marker_text(tokens)
      assert text.startswith(" <CON> ") and text.endswith("</END></s>")
      examples = text.split("</s>")[:-1]
      for example in examples:
        context, _, pairs = example.partition(" </CON>\n\n")
        parsed = fmt.parse_pairs(pairs)
        assert parsed.pairs and parsed.malformed == 0 and not parsed.incomplete_tail, name
      contexts += len(examples)
      np.testing.assert_array_equal(sequence["targets_roles"], expected_roles(tokens))
    assert 1 <= contexts <= MAX_CONTEXTS, (name, contexts)


def test_multiple_choice_and_chain_of_thought_forms():
  race = {"article": b"Tom has a red bike.", "questions": np.array([b"What colour?", b"Who?"]),
          "options": np.array([[b"red", b"blue", b"green", b"pink"],
                               [b"Tom", b"Ann", b"Bo", b"Cy"]]),
          "answers": np.array([b"A", b"Z"])}  # Z: no such option, skipped
  (context, pair), = qa_datasets.race_items(race)
  assert context == "Tom has a red bike."
  assert pair == fmt.QAPair("What colour?\nOptions:\n- red\n- blue\n- green\n- pink", "red")
  assert pair.kind == fmt.MULTIPLE_CHOICE
  qasc = {"fact1": b"Metals conduct heat", "fact2": b"Copper is a metal",
          "combinedfact": b"Copper conducts heat", "question": b"What conducts heat?",
          "choices": {"text": np.array([b"wood", b"copper"]), "label": np.array([b"A", b"B"])},
          "answerKey": b"B"}
  (context, pair), = qa_datasets.qasc_items(qasc)
  assert context == "Metals conduct heat Copper is a metal"
  assert pair.kind == fmt.CHAIN_OF_THOUGHT and pair.options == ("wood", "copper")
  assert pair.question.endswith("Let's think step by step.")
  assert pair.answer == "Copper conducts heat. Therefore, the answer is copper"
  boolq = {"passage": b"Cats purr.", "question": b"do cats purr", "label": np.int64(1)}
  assert list(qa_datasets.boolq_items(boolq)) == [
      ("Cats purr.", fmt.QAPair("Do cats purr?\nOptions:\n- yes\n- no", "yes"))]
  assert list(qa_datasets.boolq_items({**boolq, "label": np.int64(-1)})) == []


def test_grouping_keeps_the_contexts_with_most_pairs():
  items = [("a", fmt.QAPair("q1", "x")), ("b", fmt.QAPair("q1", "x")),
           ("b", fmt.QAPair("Q1", "dup")), ("c", fmt.QAPair("q1", "x")),
           ("c", fmt.QAPair("q2", "y")), ("d", fmt.QAPair("q1", "x")),
           ("d", fmt.QAPair("q2", "y")), ("d", fmt.QAPair("q3", "z"))]
  examples = tuning_examples.group_by_context(items, max_contexts=2)
  assert [(e.text, len(e.pairs)) for e in examples] == [("c", 2), ("d", 3)]
  assert len(tuning_examples.group_by_context(items, None)[1].pairs) == 1  # duplicate dropped


def test_long_examples_drop_pairs_and_sequences_pack_back_to_back():
  example = tuning_examples.TuningExample("ctx", [fmt.QAPair(f"q{i}", "a" * 20)
                                                  for i in range(5)])
  two_pairs = len(ENCODE(fmt.serialize_example("ctx", example.pairs[:2])))
  tokenized = tuning_examples.tokenize_example(example, ENCODE, max_length=two_pairs + 10)
  assert len(tokenized.tokens) == two_pairs
  assert tokenized.context_length == len(ENCODE(fmt.serialize_context("ctx")))
  assert marker_text(tokenized.tokens).count("<QUE>") == 2
  assert tuning_examples.tokenize_example(example, ENCODE, max_length=20) is None
  short = tuning_examples.TuningExample("c", [fmt.QAPair("q", "a")])
  sequences, dropped = tuning_examples.tuning_sequences([short] * 5 + [example], ENCODE, 100)
  one = len(ENCODE(fmt.serialize_example("c", short.pairs)))
  assert dropped == 0
  assert [len(s["targets"]) for s in sequences][:1] == [one * (100 // one)]
  assert marker_text(sequences[0]["targets"]) == (
      fmt.serialize_example("c", short.pairs).removeprefix("<s>") * (100 // one)).replace(
          "</s><s>", "</s>")


def tiny_pair_loss_model():
  config = llama.LlamaConfig(vocab_size=384, emb_dim=32, num_heads=2, num_kv_heads=1,
                             num_layers=1, head_dim=16, mlp_dim=64, dtype="float32")
  return pair_loss.PairLossDecoderOnlyModel(llama.Llama(config), BYTES)


def test_gradients_do_not_depend_on_context_targets(mock_sequences):
  model = tiny_pair_loss_model()
  converter = model.feature_converter(pack=True)
  assert isinstance(converter, pair_loss.PairLossFeatureConverter)
  with tfds.testing.mock_data(num_examples=6):
    ds = seqio.get_dataset("ipt_test_synth_squad", {"targets": SEQUENCE_LENGTH},
                           dataset_split="train", shuffle=False,
                           feature_converter=converter, batch_size=1)
    batch = next(ds.as_numpy_iterator())
  used = int(np.max(np.nonzero(batch["decoder_target_tokens"][0])[0])) + 1
  assert used < SEQUENCE_LENGTH
  batch = {k: jnp.asarray(v[:, :used]) for k, v in batch.items()}  # drop padding: fast grads
  weights = batch["decoder_loss_weights"]
  targets = batch["decoder_target_tokens"]
  context = (weights == 0) & (targets > 0)
  assert context.any() and (weights > 0).any()
  # The converter's weights are the task's: zero exactly on the serialised contexts.
  np.testing.assert_array_equal(np.asarray(weights[0]),
                                expected_roles(np.asarray(targets[0])) - 1)
  shapes = {k: v.shape for k, v in batch.items()}
  params = jax.jit(lambda rng: model.init_params(rng, shapes))(jax.random.PRNGKey(0))
  params = jax.tree_util.tree_map(lambda p: getattr(p, "value", p), params,
                                  is_leaf=lambda p: hasattr(p, "value"))
  grad_fn = jax.jit(jax.grad(lambda p, b: model.loss_fn(p, b, None)[0]))
  changed = {**batch, "decoder_target_tokens": jnp.where(context, (targets * 7) % 250 + 3,
                                                         targets)}
  assert (changed["decoder_target_tokens"] != targets).any()
  grads, grads_changed = grad_fn(params, batch), grad_fn(params, changed)
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_changed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Control: changing a pair target does change the gradient.
  pair = (weights > 0)
  moved = {**batch, "decoder_target_tokens": jnp.where(pair, (targets * 7) % 250 + 3, targets)}
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grad_fn(params, moved))))


def test_converter_weights_pairs_and_falls_back_to_seqio():
  converter = pair_loss.PairLossFeatureConverter(pack=False)
  ds = tf.data.Dataset.from_tensors({"targets": tf.constant([5, 6, 7], tf.int32)})
  converted = next(converter(ds, {"targets": 6}).as_numpy_iterator())
  np.testing.assert_array_equal(converted["decoder_loss_weights"], [1, 1, 1, 0, 0, 0])
  roles = tf.data.Dataset.from_tensor_slices({"targets": tf.constant([[5, 6, 7], [8, 9, 4]]),
                                              "targets_roles": tf.constant([[1, 2, 2], [1, 1, 2]])})
  converted = list(converter(roles, {"targets": 6}).as_numpy_iterator())
  np.testing.assert_array_equal(converted[0]["decoder_loss_weights"], [0, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(converted[0]["decoder_input_tokens"], [0, 5, 6, 7, 0, 0])
  # Packed: two examples in one row, each keeps its own roles.
  packed = next(pair_loss.PairLossFeatureConverter(pack=True)(
      roles, {"targets": 8}).as_numpy_iterator())
  np.testing.assert_array_equal(packed["decoder_target_tokens"], [5, 6, 7, 8, 9, 4, 0, 0])
  np.testing.assert_array_equal(packed["decoder_loss_weights"], [0, 1, 1, 0, 0, 1, 0, 0])


def test_tune_synthesizer_gin_trains_pairs_only(tmp_path):
  gin.clear_config()
  try:
    gin_setup.parse_gin(
        ["models/llama/tiny.gin", "experiments/ipt/tune_synthesizer.gin"],
        ["MODEL_DIR = '/tmp/ipt_gin_test'", "INITIAL_CHECKPOINT_PATH = '/tmp/none'",
         "TRAIN_STEPS = 10", "TASK_FEATURE_LENGTHS = {'targets': 512}", "SYNTHESIZER_TUNING_SOURCES = ['squad']"])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    assert isinstance(model, pair_loss.PairLossDecoderOnlyModel)
    assert isinstance(model.feature_converter(pack=False), pair_loss.PairLossFeatureConverter)
    name = gin.query_parameter("%MIXTURE_OR_TASK_NAME").scoped_configurable_fn()
    assert name == synthesizer_tuning.MIXTURE
    assert [t.name for t in seqio.get_mixture_or_task(name).tasks] == ["ipt_synthesizer_squad"]
    assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == {"targets": 512}
  finally:
    gin.clear_config()
    registration.remove_with_prefix("ipt_synthesizer")


def test_encoder_decoder_synthesizer_examples():
  with tfds.testing.mock_data(num_examples=3):
    synthesizer_tuning.register_synthesizer_tuning_tasks(
        BYTES, {"inputs": 512, "targets": 256}, sources=["squad"],
        architecture="encoder_decoder", prefix="ipt_test_ed", mixture="ipt_test_ed_mix")
    try:
      examples = list(seqio.get_mixture_or_task("ipt_test_ed_squad").get_dataset(
          {"inputs": 512, "targets": 256}, shuffle=False).as_numpy_iterator())
    finally:
      registration.remove_with_prefix("ipt_test_ed")
  assert len(examples) == 3
  for example in examples:
    inputs = marker_text(example["inputs"])
    targets = marker_text(example["targets"])
    assert CONTEXT.fullmatch(inputs), inputs
    assert targets.endswith("</END></s>") and fmt.parse_pairs(targets).pairs


def test_tuning_dataset_position_can_be_checkpointed(mock_sequences, tmp_path):
  """The trainer saves the tf.data iterator; Python generators could not be saved."""
  del mock_sequences
  with tfds.testing.mock_data(num_examples=6):
    ds = seqio.get_mixture_or_task("ipt_test_synth_coqa").get_dataset(
        {"targets": SEQUENCE_LENGTH}, split="train", shuffle=False)
    iterator = iter(ds)
    first = next(iterator)
    tf.train.Checkpoint(data=iterator).save(str(tmp_path / "position"))
  assert first["targets"].shape[0] == first["targets_roles"].shape[0] > 0
