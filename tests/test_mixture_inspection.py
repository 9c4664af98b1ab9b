"""`instruct-jax inspect`: a mixture's tasks, rates, counts and sample prompts."""
import seqio

from instruct_jax import cli
from instruct_jax.data import mixture_inspection
from tasks_registry import smoke


def test_inspect_reports_tasks_rates_counts_and_samples(capsys):
  cli.run_command(["inspect", "--mixture=smoke_holdout_eval", "--num_examples=2"],
                  join_job=False)
  output = capsys.readouterr().out
  names = smoke.task_names([smoke.HELD_OUT_CLUSTER])
  share = f"{100 / len(names):.1f}%"
  train = smoke.NUM_EXAMPLES["train"]
  width = max(len(name) for name in names + ["task"])
  for name in names:
    assert f"{name:<{width}}  {train:>10}  {share:>6}  {train:>10}  source" in output
    first, second = smoke.generate_examples(name, "train")[:2]
    section = output.split(f"== {name}\n")[1].split("\n== ")[0]
    assert f"[0] targets: {first.targets}" in section
    assert f"[1] targets: {second.targets}" in section
    assert f"[0] inputs: {first.inputs.splitlines()[0]}" in section


def test_summaries_of_a_task_and_of_a_missing_split():
  task = seqio.get_mixture_or_task("smoke_reverse_word")
  (summary,) = mixture_inspection.summarize(task, "validation", num_samples=1)
  assert (summary.rate, summary.examples, summary.counted_from, summary.cached) == (
      1.0, smoke.NUM_EXAMPLES["validation"], "source", False)
  assert summary.samples == [{
      "inputs": smoke.generate_examples("smoke_reverse_word", "validation")[0].inputs,
      "targets": smoke.generate_examples("smoke_reverse_word", "validation")[0].targets}]
  assert mixture_inspection.summarize(task, "test") == []
