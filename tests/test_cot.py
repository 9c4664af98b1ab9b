"""CoT formats, prompts, answer extraction, file loaders and the seqio CoT tasks."""
import json
import random

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import cot_data
from instruct_jax.data import cot
from tasks_registry import cot as cot_tasks
from tasks_registry import registration

BYTES = seqio.ByteVocabulary()
LENGTHS = {"inputs": 512, "targets": 96}


@pytest.fixture(autouse=True)
def _drop_test_registrations():
  yield
  registration.remove_with_prefix("test_cot")


# --------------------------------------------------------------------------
# Answer extraction and comparison.


@pytest.mark.parametrize("text, expected", [
    ("She has 3 + 4 = 7 apples. The answer is 7.", 7.0),
    ("The temperature fell to -12 degrees.", -12.0),
    ("It costs $1,234,567 in total", 1234567.0),
    ("so 2,500.75 dollars", 2500.75),
    ("each gets 0.5 of a pie, i.e. .25 of the pizza", 0.25),
    ("The answer is 18.0.", 18.0),
    ("5-3 equals 2", 2.0),
    ("items 3,4 and 5", 5.0),
    ("no number here", None),
    ("", None),
])
def test_extract_answer(text, expected):
  assert cot.extract_answer(text) == expected


def test_find_numbers_handles_commas_signs_and_decimals():
  assert cot.find_numbers("1,000 and -2.5 then 3,4 and x7") == [1000.0, -2.5, 3.0, 4.0]


def test_numeric_comparison_and_metric():
  assert cot.answers_match(18.0, 18)
  assert cot.answers_match(0.1 + 0.2, 0.3)
  assert not cot.answers_match(None, 3.0)
  assert not cot.answers_match(17.0, 18.0)
  result = cot.math_accuracy(
      [18.0, "1,000", 5.0, 2.0],
      ["So 9 * 2 = 18. The answer is 18.", "The answer is 1000.", "I do not know.",
       b"The answer is -2."])
  assert result == {"accuracy": 50.0}
  with pytest.raises(ValueError, match="pair up"):
    cot.math_accuracy([1.0], [])


# --------------------------------------------------------------------------
# Formats and prompts.


def test_gsm8k_answer_parsing():
  answer = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
            "Natalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 1,072")
  rationale, number = cot.parse_gsm8k_answer(answer)
  assert rationale == ("Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips "
                       "altogether.")
  assert number == 1072.0
  with pytest.raises(ValueError, match="####"):
    cot.parse_gsm8k_answer("no final line")


def test_targets_of_each_format():
  problem = cot.MathProblem("How many?", 72.0, "48 + 24 = 72.")
  assert cot.target_text(problem, cot.ZERO_SHOT) == "The answer is 72."
  assert cot.target_text(problem, cot.FEW_SHOT) == "The answer is 72."
  assert cot.target_text(problem, cot.ZERO_SHOT_COT) == "48 + 24 = 72. The answer is 72."
  # A chain that already ends with its answer is kept as it is.
  done = cot.MathProblem("How many?", 72.0, "48 + 24 = 72. The answer is 72.")
  assert cot.target_text(done, cot.FEW_SHOT_COT) == "48 + 24 = 72. The answer is 72."
  assert cot.target_text(cot.MathProblem("q", 2.5), cot.ZERO_SHOT) == "The answer is 2.5."
  with pytest.raises(ValueError, match="Unknown CoT format"):
    cot.target_text(problem, "three_shot")


def test_prompts_of_each_format():
  exemplars = [cot.MathProblem(f"Question {i}?", i, f"Step {i}.") for i in range(4)]
  assert cot.build_prompt("How many?", cot.ZERO_SHOT) == "Q: How many?\nA:"
  assert cot.build_prompt("How many?", cot.ZERO_SHOT_COT) == (
      "Q: How many?\nA: Let's think step by step.")
  few = cot.build_prompt("How many?", cot.FEW_SHOT, exemplars)
  assert few.count("Q: ") == 5 and few.endswith("Q: How many?\nA:")
  assert "Q: Question 1?\nA: The answer is 1." in few and "Step 1." not in few
  few_cot = cot.build_prompt("How many?", cot.FEW_SHOT_COT, exemplars)
  assert "Q: Question 2?\nA: Step 2. The answer is 2." in few_cot
  assert "step by step" not in few_cot


def test_few_shot_prompts_drop_exemplars_to_fit_the_budget():
  exemplars = [cot.MathProblem(f"Question number {i}?", i, "x" * 50) for i in range(4)]
  prompt = cot.build_prompt("Last?", cot.FEW_SHOT_COT, exemplars, max_tokens=200,
                            count_tokens=len)
  assert len(prompt) <= 200 and prompt.endswith("Q: Last?\nA:")
  assert "Question number 0" in prompt and "Question number 3" not in prompt
  assert cot.build_prompt("Last?", cot.FEW_SHOT, exemplars, 5, len) == "Q: Last?\nA:"


def test_exemplar_sampling_is_fixed_and_excludes_the_query():
  picks = cot.sample_exemplars(10, 4, exclude=3, seed=0)
  assert picks == cot.sample_exemplars(10, 4, exclude=3, seed=0)
  assert len(set(picks)) == 4 and 3 not in picks
  assert cot.sample_exemplars(3, 4, exclude=0, seed=1) in ([1, 2], [2, 1])


# --------------------------------------------------------------------------
# Files.


def test_heldout_loaders_read_the_public_formats(tmp_path):
  paths = cot_data.write_heldout_files(str(tmp_path), num=3)
  multiarith = cot.load_multiarith(paths["multiarith"])
  svamp = cot.load_svamp(paths["svamp"])
  asdiv = cot.load_asdiv(paths["asdiv"])
  assert len(multiarith) == len(svamp) == 3
  assert len(asdiv) == 3  # the ratio answer '3:4' is skipped
  for problem in multiarith + svamp + asdiv:
    assert problem.question.endswith("?") and ". How many" in problem.question
    assert problem.answer == cot.extract_answer(problem.question.split("finds")[0]) + \
        cot.extract_answer(problem.question.split("finds")[1])
  json_path = tmp_path / "asdiv.json"
  json_path.write_text(json.dumps([{"Body": "Tom has 2 pens", "Question": "How many?",
                                    "Answer": "2 (pens)"}]))
  assert cot.load_asdiv(str(json_path)) == [cot.MathProblem("Tom has 2 pens. How many?", 2.0)]
  with pytest.raises(ValueError, match="sQuestion"):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "x"}]))
    cot.load_multiarith(str(bad))


def test_teacher_file_parsing(tmp_path):
  path = cot_data.write_teacher_file(str(tmp_path / "teacher.jsonl"), num=3)
  records = cot.load_teacher_file(path)
  assert len(records) == 3
  first = records[0]
  assert "".join(first.teacher_tokens) == first.problem.rationale
  assert first.teacher_top_k[0][0] == (first.teacher_tokens[0], -0.2)
  plain = tmp_path / "plain.jsonl"
  plain.write_text(json.dumps({"question": "q", "answer": "1,000",
                               "chain_of_thought": "c"}) + "\n\n")
  (record,) = cot.load_teacher_file(str(plain))
  assert record.problem.answer == 1000.0 and record.teacher_tokens == ()
  broken = tmp_path / "broken.jsonl"
  broken.write_text(json.dumps({"question": "q", "answer": 1}) + "\n")
  with pytest.raises(ValueError, match="chain_of_thought"):
    cot.load_teacher_file(str(broken))
  broken.write_text("{not json\n")
  with pytest.raises(ValueError, match="broken.jsonl:1 is not valid JSON"):
    cot.load_teacher_file(str(broken))


# --------------------------------------------------------------------------
# seqio tasks.


def _gsm8k_records(num):
  rng = random.Random(5)
  records = []
  for _ in range(num):
    p = cot_data.problem(rng)
    answer = f"{p['chain_of_thought'].split(' The answer')[0]}\n#### {p['answer']}"
    records.append({"question": p["question"], "answer": answer,
                    "annotation": "", "short_answer": str(p["answer"])})
  return records


@pytest.fixture
def mock_gsm8k():
  records = _gsm8k_records(20)

  def as_dataset(self, split, **kwargs):
    del self, kwargs
    rows = records if "train" in str(split) else records[:5]
    return tf.data.Dataset.from_tensor_slices({k: [r[k] for r in rows] for k in rows[0]})

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    yield records


def _examples(name, split, lengths=LENGTHS):
  task = seqio.get_mixture_or_task(name)
  return list(task.get_dataset(lengths, split=split, shuffle=False).as_numpy_iterator())


def test_default_registrations_exist():
  import tasks_registry  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  for fmt in cot.FORMATS:
    assert f"cot_gsm8k_{fmt}" in seqio.TaskRegistry.names()
  mixture = seqio.get_mixture_or_task("cot_heldout_math_eval")
  assert sorted(t.name for t in mixture.tasks) == [
      "cot_eval_asdiv_few_shot_cot", "cot_eval_multiarith_few_shot_cot",
      "cot_eval_svamp_few_shot_cot"]
  assert len(seqio.get_mixture_or_task("cot_math_eval").tasks) == 8


def test_gsm8k_tasks_in_four_formats(mock_gsm8k):
  mixture = cot_tasks.register_gsm8k_tasks(BYTES, prefix="test_cot_gsm8k",
                                           rates={"zero_shot": 1.0, "few_shot_cot": 3.0},
                                           max_input_tokens=400)
  rates = {t.name: seqio.get_mixture_or_task(mixture).get_rate(t)
           for t in seqio.get_mixture_or_task(mixture).tasks}
  assert rates == {"test_cot_gsm8k_zero_shot": 1.0, "test_cot_gsm8k_few_shot_cot": 3.0}
  train = _examples("test_cot_gsm8k_zero_shot", "train")
  validation = _examples("test_cot_gsm8k_zero_shot", "validation")
  assert len(train) == 18 and len(validation) == 2
  first = train[0]
  assert first["inputs_pretokenized"].decode() == f"Q: {mock_gsm8k[0]['question']}\nA:"
  assert first["targets_pretokenized"].decode() == f"The answer is {mock_gsm8k[0]['short_answer']}."
  assert first["targets"][-1] == 1 and first["answer"] == float(mock_gsm8k[0]["short_answer"])
  cot_example = _examples("test_cot_gsm8k_zero_shot_cot", "train")[0]
  assert cot_example["inputs_pretokenized"].decode().endswith("Let's think step by step.")
  assert cot_example["targets_pretokenized"].decode().endswith(
      f"The answer is {mock_gsm8k[0]['short_answer']}.")
  few = _examples("test_cot_gsm8k_few_shot_cot", "train")
  for example in few:
    prompt = example["inputs_pretokenized"].decode()
    assert len(BYTES.encode(prompt)) <= 400
    assert 1 <= prompt.count("Q: ") - 1 <= 4 and "The answer is" in prompt
  # Exemplars are other problems than the query.
  query = few[0]["inputs_pretokenized"].decode().rsplit("Q: ", 1)[1]
  assert few[0]["inputs_pretokenized"].decode().count(query) == 1


def test_heldout_eval_tasks_from_user_files(tmp_path, monkeypatch, mock_gsm8k):
  paths = cot_data.write_heldout_files(str(tmp_path), num=4)
  selection = cot_tasks.register_math_eval_tasks(BYTES, prefix="test_cot_eval",
                                                 mixture_prefix="test_cot")
  assert selection == "test_cot_heldout_math_eval"
  monkeypatch.setenv(cot_tasks.DATA_DIR_ENV, str(tmp_path))
  examples = _examples("test_cot_eval_svamp_few_shot_cot", "test")
  assert len(examples) == 4
  prompt = examples[0]["inputs_pretokenized"].decode()
  assert prompt.startswith("Q: " + cot.EVAL_EXEMPLARS[0].question)
  task = seqio.get_mixture_or_task("test_cot_eval_svamp_few_shot_cot")
  gold = task.postprocess_fn(examples[0]["targets_pretokenized"], example=examples[0],
                             is_target=True)
  assert gold == examples[0]["answer"]
  assert task.postprocess_fn(b"so 3. The answer is 3.", example=examples[0],
                             is_target=False) == "so 3. The answer is 3."
  zero = _examples("test_cot_eval_asdiv_zero_shot_cot", "test")
  assert len(zero) == 4 and zero[0]["inputs_pretokenized"].decode().endswith("step by step.")
  assert len(_examples("test_cot_eval_gsm8k_few_shot_cot", "test")) == 5
  # Explicit paths win over the environment; a missing file says how to fix it.
  monkeypatch.delenv(cot_tasks.DATA_DIR_ENV)
  cot_tasks.register_math_eval_tasks(BYTES, files={"multiarith": paths["multiarith"]},
                                     prefix="test_cot_eval", mixture_prefix="test_cot")
  assert len(_examples("test_cot_eval_multiarith_zero_shot_cot", "test")) == 4
  with pytest.raises(FileNotFoundError, match="INSTRUCT_JAX_COT_DATA_DIR"):
    _examples("test_cot_eval_svamp_zero_shot_cot", "test")


def test_teacher_tasks_carry_sparse_teacher_features(tmp_path):
  path = cot_data.write_teacher_file(str(tmp_path / "teacher.jsonl"), num=30)
  mixture = cot_tasks.register_teacher_tasks(path, BYTES, prefix="test_cot_teacher", top_k=3,
                                             validation_fraction=0.2, max_input_tokens=480)
  assert mixture == "test_cot_teacher_formats"
  # 40 target bytes trim the chains of thought (~70 bytes); 96 keep them whole.
  for lengths in ({"inputs": 512, "targets": 40}, {"inputs": 512, "targets": 96}):
    for fmt in cot.FORMATS:
      examples = _examples(f"test_cot_teacher_{fmt}", "train", lengths)
      validation = _examples(f"test_cot_teacher_{fmt}", "validation", lengths)
      assert len(examples) + len(validation) == 30 and validation
      matched = 0
      for example in examples:
        targets, indices, probs = (example["targets"], example["teacher_indices"],
                                   example["teacher_probs"])
        assert len(targets) <= lengths["targets"] and targets[-1] == BYTES.eos_id
        assert indices.shape == probs.shape == (len(targets), 3)
        np.testing.assert_array_equal(indices[-1], [BYTES.eos_id, 0, 0])
        np.testing.assert_array_equal(probs[-1], [1.0, 0.0, 0.0])
        one_hot = probs[:, 0] == 1.0
        np.testing.assert_array_equal(indices[one_hot, 0], targets[one_hot])
        assert np.all(probs.sum(axis=1) <= 1.0 + 1e-6)
        matched += int((~one_hot).sum())
      if cot.is_cot(fmt) and lengths["targets"] == 96:
        # Single-character teacher tokens ('.') match byte tokens 1:1.
        assert matched > 0
      elif not cot.is_cot(fmt):
        assert matched == 0
  lengths = {"inputs": 512, "targets": 96}
  # A distillation-format mixture keeps the teacher features through seqio's mixing.
  batch = next(seqio.get_mixture_or_task(mixture).get_dataset(
      lengths, split="train", shuffle=False).as_numpy_iterator())
  assert {"teacher_indices", "teacher_probs"} <= set(batch)
  # Formats outside distill_formats get one-hot rows only.
  cot_tasks.register_teacher_tasks(path, BYTES, prefix="test_cot_plain", top_k=3,
                                   distill_formats=())
  for example in _examples("test_cot_plain_few_shot_cot", "train", lengths):
    assert (example["teacher_probs"][:, 0] == 1.0).all()


def test_bbh_tasks_through_the_bigbench_source(tmp_path):
  bbh = tmp_path / "bbh"
  bbh.mkdir()
  for task, answers in (("boolean_expressions", ["True", "False"]),
                        ("date_understanding", ["(A)", "(B)"])):
    examples = [{"input": f"question {i} of {task}", "target": answers[i % 2]}
                for i in range(6)]
    (bbh / f"{task}.json").write_text(json.dumps({"canary": "x", "examples": examples}))
  mixture = cot_tasks.register_bbh_tasks(str(bbh), BYTES, prefix="test_cot_bbh")
  assert mixture == "test_cot_bbh"
  assert sorted(t.name for t in seqio.get_mixture_or_task(mixture).tasks) == [
      "test_cot_bbh_boolean_expressions_gen", "test_cot_bbh_date_understanding_gen"]
  examples = _examples("test_cot_bbh_date_understanding_gen", "all")
  assert len(examples) == 6
  prompt = examples[0]["inputs_pretokenized"].decode()
  assert prompt.count("\nQ: ") == 4 and prompt.endswith("question 0 of date_understanding\nA: ")
  with pytest.raises(ValueError, match="not in"):
    cot_tasks.register_bbh_tasks(str(bbh), BYTES, prefix="test_cot_bbh", tasks=["navigate"])
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="BIG-Bench Hard"):
    cot_tasks.bbh_task_files(str(empty))


def test_seqio_evaluator_scores_gold_outputs_as_correct(tmp_path, monkeypatch):
  cot_data.write_heldout_files(str(tmp_path), num=4)
  monkeypatch.setenv(cot_tasks.DATA_DIR_ENV, str(tmp_path))
  cot_tasks.register_math_eval_tasks(BYTES, prefix="test_cot_eval", mixture_prefix="test_cot")
  evaluator = seqio.Evaluator(
      mixture_or_task_name="test_cot_heldout_math_eval",
      feature_converter=seqio.EncDecFeatureConverter(pack=False), eval_split="test",
      sequence_length={"inputs": 1024, "targets": 32}, shuffle=False)

  def gold_predictions(dataset, model_feature_shapes=None):
    del model_feature_shapes  # The gold target: "The answer is N." and EOS.
    return [(index, features["decoder_target_tokens"])
            for index, features in dataset.as_numpy_iterator()]

  def wrong_predictions(dataset, model_feature_shapes=None):
    del model_feature_shapes
    return [(index, np.asarray(BYTES.encode("The answer is 100000.") + [1]))
            for index, _ in dataset.as_numpy_iterator()]

  for predict_fn, expected in ((gold_predictions, 100.0), (wrong_predictions, 0.0)):
    future, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn,
                                   score_fn=lambda *a, **k: [])
    results = future.result()
    assert sorted(results) == ["test_cot_eval_asdiv_few_shot_cot",
                               "test_cot_eval_multiarith_few_shot_cot",
                               "test_cot_eval_svamp_few_shot_cot"]
    for metrics in results.values():
      assert metrics["accuracy"] == expected
