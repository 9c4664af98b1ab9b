"""BIG-bench task.json files as seqio tasks (files written by the tests themselves)."""

import json

import numpy as np
import pytest
import seqio

from instruct_jax.data import bigbench

VOCAB = seqio.ByteVocabulary()

GENERATIVE = {
    "name": "tiny_arithmetic",
    "stop_string": "\n",
    "examples": [
        {"input": "1 + 1", "target": "2"},
        {"input": "2 + 2", "target": ["4", "four"]},
        {"input": "3 + 1", "target": "4"},
        {"input": "0 + 5", "target": "5"},
        {"input": "6 + 3", "target": "9"},
    ],
}

MULTIPLE_CHOICE = {
    "task_prefix": "Answer the question.",
    "example_output_prefix": "\nAnswer: ",
    "examples": [
        {"input": "Is fire hot?", "target_scores": {"right": 1, "wrong": 0}},
        {"input": "Is ice hot?", "target_scores": {"wrong": 0, "right": 1, "maybe": 0}},
        {"input": "Is snow cold?", "target_scores": {"wrong": 0, "right": 1}},
    ],
}


def _write(tmp_path, name, content):
  path = tmp_path / f"{name}.json"
  path.write_text(content if isinstance(content, str) else json.dumps(content))
  return str(path)


def test_prompts_follow_bigbench_defaults_and_file_keys():
  fmt = bigbench.PromptFormat.from_task_json(GENERATIVE)
  examples = bigbench.render_examples(GENERATIVE, fmt)
  assert examples[0].inputs == "\nQ: 1 + 1\nA: "
  assert examples[1].answers == ("4", "four") and examples[1].targets == "4"

  fmt = bigbench.PromptFormat.from_task_json(MULTIPLE_CHOICE)
  first = bigbench.render_examples(MULTIPLE_CHOICE, fmt, choice_seed=None)[1]
  assert first.inputs == ("Answer the question.\nQ: Is ice hot?\n  choice: wrong\n  choice: "
                          "right\n  choice: maybe\nAnswer: ")
  assert first.options == ("wrong", "right", "maybe")
  assert first.correct_options == ("right",) and first.targets == "right"

  fmt = bigbench.PromptFormat.from_task_json(MULTIPLE_CHOICE, append_choices_to_input=False,
                                             example_input_prefix="Q: ")
  assert bigbench.render_examples(MULTIPLE_CHOICE, fmt)[0].inputs == (
      "Answer the question.Q: Is fire hot?\nAnswer: ")


def test_few_shot_prompts_use_other_examples():
  fmt = bigbench.PromptFormat.from_task_json(GENERATIVE)
  examples = bigbench.render_examples(GENERATIVE, fmt, num_shots=2, seed=3)
  for example, source in zip(examples, GENERATIVE["examples"]):
    parts = example.inputs.split("\n\nQ: ")  # separator "\n" + the next "\nQ: "
    assert len(parts) == 3
    assert not parts[0].startswith("\nQ: " + source["input"] + "\n")
    assert example.inputs.endswith("\nQ: " + source["input"] + "\nA: ")
  assert examples == bigbench.render_examples(GENERATIVE, fmt, num_shots=2, seed=3)
  with pytest.raises(ValueError, match="num_shots"):
    bigbench.render_examples(GENERATIVE, fmt, num_shots=5)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ({"examples": []}, "no non-empty"),
    ({"examples": [{"input": "a", "target": "b"}, {"target": "c"}]}, "example 1 has no string"),
    ({"examples": [{"input": "a"}]}, "neither \"target\" nor"),
    ({"examples": [{"input": "a", "target": 3}]}, "\"target\" must be"),
    ({"examples": [{"input": "a", "target_scores": {"x": "high"}}]}, "target_scores"),
])
def test_malformed_task_files_are_rejected_with_the_reason(tmp_path, content, message):
  path = _write(tmp_path, "bad", content)
  with pytest.raises(ValueError, match=message) as error:
    bigbench.read_task_json(path)
  assert path in str(error.value)


def test_missing_file_is_reported(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    bigbench.read_task_json(str(tmp_path / "absent.json"))


def test_registers_generative_and_multiple_choice_tasks(tmp_path):
  assert bigbench.register_bigbench_task(
      "bb_test_arith", _write(tmp_path, "g", GENERATIVE), VOCAB) == ["bb_test_arith_gen"]
  names = bigbench.register_bigbench_task("bb_test_mc", _write(tmp_path, "m", MULTIPLE_CHOICE),
                                          VOCAB)
  assert names == ["bb_test_mc_gen", "bb_test_mc_mc"]

  task = seqio.get_mixture_or_task("bb_test_arith_gen")
  rows = list(task.get_dataset(None, split="all", shuffle=False).as_numpy_iterator())
  assert len(rows) == 5
  assert VOCAB.decode(rows[0]["inputs"].tolist()) == "\nQ: 1 + 1\nA: "
  assert rows[0]["targets"].tolist()[-1] == VOCAB.eos_id
  sizes = {split: len(list(task.get_dataset(None, split=split, shuffle=False)))
           for split in ("train", "validation")}
  assert sizes == {"train": 4, "validation": 1}

  option_rows = list(seqio.get_mixture_or_task("bb_test_mc_mc").get_dataset(
      None, split="all", shuffle=False).as_numpy_iterator())
  assert len(option_rows) == 2 + 3 + 2
  correct = [VOCAB.decode(r["targets"].tolist()) for r in option_rows if r["is_correct"]]
  assert correct == ["right"] * 3
  assert len({int(r["example_id"]) for r in option_rows}) == 3


def _evaluate(task_name, predict_fn=None, score_fn=None):
  evaluator = seqio.Evaluator(task_name, seqio.EncDecFeatureConverter(pack=False),
                              eval_split="all", async_compute_metrics=False)
  future, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn,
                                 score_fn=score_fn)
  return future.result()[task_name]


def test_generative_task_scores_exact_match_after_stop_string(tmp_path):
  bigbench.register_bigbench_task("bb_test_arith", _write(tmp_path, "g", GENERATIVE), VOCAB)
  answers = {"1 + 1": "2\nQ: more text", "2 + 2": "four", "3 + 1": " 4", "0 + 5": "6",
             "6 + 3": "nine"}

  def predict_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    out = []
    for index, features in dataset.as_numpy_iterator():
      prompt = VOCAB.decode(features["encoder_input_tokens"].tolist())
      question = prompt.split("Q: ")[1].split("\n")[0]
      tokens = VOCAB.encode(answers[question]) + [VOCAB.eos_id]
      out.append((index, tokens + [0] * (32 - len(tokens))))  # fixed width, as models give
    return out

  # Right: "2" (cut at the stop string), "four" (second target), " 4" (stripped).
  result = _evaluate("bb_test_arith_gen", predict_fn=predict_fn)
  np.testing.assert_allclose(result["accuracy"], 60.0)


def test_multiple_choice_task_picks_the_best_scoring_option(tmp_path):
  bigbench.register_bigbench_task("bb_test_mc", _write(tmp_path, "m", MULTIPLE_CHOICE), VOCAB)

  def score_fn_preferring(option):
    def score_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      return [(index, 0.0 if VOCAB.decode(f["decoder_target_tokens"].tolist()) == option
               else -3.0) for index, f in dataset.as_numpy_iterator()]
    return score_fn

  assert _evaluate("bb_test_mc_mc", score_fn=score_fn_preferring("right"))["accuracy"] == 100
  assert _evaluate("bb_test_mc_mc", score_fn=score_fn_preferring("wrong"))["accuracy"] == 0


def test_output_regex_capture_group_extracts_the_answer():
  post = bigbench.prediction_postprocessor
  assert post("Let's think. So the answer is (B). Done", output_regex=r"answer is (.*?)\.") == "(B)"
  assert post("x 42 y", output_regex=r"\d+") == "42"
  assert post("no number", output_regex=r"\d+") == ""
  assert post(b"A: yes\nQ: next", stop_string="\n") == "A: yes\n"  # BIG-bench keeps it
  example = {"answers": np.asarray([b"4", b"four"])}
  assert post(b"4", example, is_target=True) == ["4", "four"]


def test_registers_a_directory_of_tasks_in_both_layouts(tmp_path):
  (tmp_path / "boolean_logic").mkdir()
  (tmp_path / "boolean_logic" / "task.json").write_text(json.dumps(MULTIPLE_CHOICE))
  (tmp_path / "word_sorting.json").write_text(json.dumps(GENERATIVE))
  assert set(bigbench.task_files(str(tmp_path))) == {"boolean_logic", "word_sorting"}
  names = bigbench.register_bigbench_directory(str(tmp_path), VOCAB, prefix="bbt_",
                                               mixture_name="bbt")
  assert set(names) == {"bbt_boolean_logic_gen", "bbt_boolean_logic_mc", "bbt_word_sorting_gen",
                        "bbt_gen", "bbt_mc"}
  assert {t.name for t in seqio.get_mixture_or_task("bbt_gen").tasks} == {
      "bbt_boolean_logic_gen", "bbt_word_sorting_gen"}
  with pytest.raises(FileNotFoundError, match="No BIG-bench task files"):
    bigbench.task_files(str(tmp_path / "boolean_logic" / "missing"))


def _task_dir(root, name, content):
  root.mkdir(parents=True, exist_ok=True)
  (root / name).mkdir()
  (root / name / "task.json").write_text(json.dumps(content))
  return root / name


PARENT = {"name": "arith", "description": "subtasks in folders", "keywords": ["math"]}


def test_subtasks_of_a_task_folder_are_registered_not_the_parent(tmp_path):
  task = _task_dir(tmp_path, "arith", PARENT)
  _task_dir(task, "one_digit", GENERATIVE)
  _task_dir(task, "yes_no", MULTIPLE_CHOICE)
  expected = {"bbs_arith_one_digit_gen", "bbs_arith_yes_no_gen", "bbs_arith_yes_no_mc"}
  assert set(bigbench.register_bigbench_directory(str(task), VOCAB, prefix="bbs_")) == expected
  assert set(bigbench.register_bigbench_task("bbs_arith", str(task / "task.json"),
                                             VOCAB)) == expected
  rows = list(seqio.get_mixture_or_task("bbs_arith_one_digit_gen").get_dataset(
      None, split="all", shuffle=False))
  assert len(rows) == 5


def test_benchmark_tasks_directory_with_parents_registers_every_subtask(tmp_path):
  root = tmp_path / "benchmark_tasks"
  _task_dir(_task_dir(root, "arith", PARENT), "one_digit", GENERATIVE)
  _task_dir(root, "plain", MULTIPLE_CHOICE)
  _task_dir(root, "inline", {"name": "inline", "subtasks": [
      dict(GENERATIVE, name="inline:sums")]})
  _task_dir(root, "empty", {"name": "empty", "description": "no examples, no subtasks"})
  names = bigbench.register_bigbench_directory(str(root), VOCAB, prefix="bbd_")
  assert set(names) == {"bbd_arith_one_digit_gen", "bbd_plain_gen", "bbd_plain_mc",
                        "bbd_inline_sums_gen"}
  with pytest.raises(ValueError, match="no \"examples\" and no subtasks"):
    bigbench.register_bigbench_task("bbd_empty", str(root / "empty" / "task.json"), VOCAB)


def _bigbench_choice_order(examples, seed=42):
  """Reference: BIG-bench permutes sorted option names with one RandomState, in order."""
  rng = np.random.RandomState(seed)
  return [list(rng.permutation(sorted(e["target_scores"]))) for e in examples]


def test_appended_choices_are_permuted_as_bigbench_does():
  examples = [{"input": f"q{i}", "target_scores": {c: int(c == "c") for c in "abcde"}}
              for i in range(6)]
  examples.append(dict(examples[0]))  # a duplicate: BIG-bench formats it only once
  task = {"examples": examples}
  fmt = bigbench.PromptFormat.from_task_json(task)
  rendered = bigbench.render_examples(task, fmt)
  orders = _bigbench_choice_order(examples[:6])
  for example, order in zip(rendered, orders + orders[:1]):
    choices = example.inputs.split("\n  choice: ")[1:]
    choices[-1] = choices[-1][:-len("\nA: ")]
    assert choices == order
  assert len({tuple(o) for o in orders}) > 1  # per example, not one fixed order
  assert rendered[1].options == ("a", "b", "c", "d", "e")  # scoring keeps the file's order
  assert rendered[1].correct_options == ("c",)
  shot = bigbench.render_examples(task, fmt, num_shots=1, seed=0)[0].inputs.split("\n\nQ: ")[0]
  index = int(shot.split("q")[1][0])
  assert shot.endswith("".join("\n  choice: " + c for c in orders[index]) + "\nA: c")


def test_generative_outputs_are_postprocessed_as_bigbench_does(tmp_path):
  plain = {"examples": GENERATIVE["examples"]}  # neither stop_string nor output_regex
  bigbench.register_bigbench_task("bb_test_plain", _write(tmp_path, "p", plain), VOCAB)
  post = seqio.get_mixture_or_task("bb_test_plain_gen").postprocess_fn
  assert post(b"4. Then 5? yes") == "4"
  assert post(b"\nfour") == "four"
  assert post(b"") == ""
  stop = bigbench.prediction_postprocessor
  # Only a stop string after the start cuts (BIG-bench's find(...) > 0): never to "".
  assert stop("\n4\nQ: more", stop_string="\n") == "\n4\nQ: more"
  assert stop("9 + 1 = 10.", stop_string=".") == "9 + 1 = 10."
  with pytest.raises(ValueError, match="non-capturing"):
    stop("a b", output_regex=r"(a) (b)")
  bigbench.register_bigbench_task("bb_test_raw", _write(tmp_path, "r", plain), VOCAB,
                                  output_regex="")
  assert seqio.get_mixture_or_task("bb_test_raw_gen").postprocess_fn(b"4. Then") == "4. Then"


def test_example_limit_counts_examples_and_keeps_all_their_options(tmp_path):
  from instruct_jax.data import templates
  bigbench.register_bigbench_task("bb_test_mc", _write(tmp_path, "m", MULTIPLE_CHOICE), VOCAB)
  converter = seqio.EncDecFeatureConverter(pack=False)
  with templates.rank_classification_example_limit(2):
    evaluator = seqio.Evaluator("bb_test_mc_mc", converter, eval_split="all",
                                async_compute_metrics=False)
  rows = list(evaluator.cached_task_datasets["bb_test_mc_mc"].as_numpy_iterator())
  assert len(rows) == 2 + 3  # both examples whole, the third left out
  assert len({int(r["example_id"]) for r in rows}) == 2

  def score_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    return [(i, 0.0 if VOCAB.decode(f["decoder_target_tokens"].tolist()) == "right" else -3.0)
            for i, f in dataset.as_numpy_iterator()]

  future, _ = evaluator.evaluate(compute_metrics=True, predict_fn=None, score_fn=score_fn)
  result = future.result()["bb_test_mc_mc"]
  assert result["num_examples"] == 2 and result["accuracy"] == 100
  with pytest.raises(ValueError, match="must be positive"):
    with templates.rank_classification_example_limit(-1):
      pass
