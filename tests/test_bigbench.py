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
  first = bigbench.render_examples(MULTIPLE_CHOICE, fmt)[1]
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
  assert post(b"A: yes\nQ: next", stop_string="\n") == "A: yes"
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
