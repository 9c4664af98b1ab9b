"""`instruct-jax prepare`: the TFDS datasets of a mixture, their states, building them.

Hermetic: --dry_run only inspects builders (no download); the build test uses two tiny
TFDS builders defined here (one generated locally, one needing a manual download).
"""
import pytest
import seqio
import tensorflow_datasets as tfds

from instruct_jax import cli
from instruct_jax.data import prepare
from tasks_registry import registration
from tasks_registry.flan import clusters
from tasks_registry.flan import mixtures
from tasks_registry.flan.datasets import DATASETS

# What TFDS's own builders say about the summarization cluster: these three need files
# fetched by hand (registration forms, a custom script).
SUMMARIZATION_MANUAL = {"newsroom:1.0.0", "samsum:1.0.0", "xsum:1.1.0"}


def _table_rows(output):
  """{dataset: state} of the final table (progress lines start with "[i/n]")."""
  states = (prepare.READY, prepare.TO_BUILD, prepare.BUILT, prepare.MANUAL, prepare.FAILED)
  rows = {}
  for line in output.splitlines():
    name, _, state = line.partition("  ")
    if state.strip() in states and not line.startswith("["):
      rows[name] = state.strip()
  return rows


def test_dry_run_lists_exactly_the_mixtures_tfds_datasets(tmp_path, capsys):
  mixture = mixtures.mixture_name("eval", "summarization")
  cli.run_command(["prepare", f"--mixture={mixture}", "--dry_run", f"--data_dir={tmp_path}"],
                  join_job=False)
  output = capsys.readouterr().out
  expected = {source.tfds_name for name in clusters.CLUSTERS["summarization"]
              for source in DATASETS[name].sources.values()}
  rows = _table_rows(output)
  assert set(rows) == expected
  assert {name for name, state in rows.items() if state == prepare.MANUAL} == SUMMARIZATION_MANUAL
  assert all(state == prepare.TO_BUILD for name, state in rows.items()
             if name not in SUMMARIZATION_MANUAL)
  assert "Manual download for xsum:1.1.0:" in output and "--manual_dir=DIR" in output
  assert not list(tmp_path.iterdir())  # A dry run writes nothing.


class PrepareTestNumbers(tfds.core.GeneratorBasedBuilder):
  """Five numbers, generated locally."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(5):
      yield i, {"text": f"number {i}"}


class PrepareTestManual(PrepareTestNumbers):
  """The same, but TFDS would need files placed by hand."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Ask the authors for numbers.txt and put it in manual_dir."


@pytest.fixture
def two_builder_mixture():
  names = []
  for builder in ("prepare_test_numbers", "prepare_test_manual"):
    name = f"preparetest_{builder}"
    registration.replace_task(
        name, source=seqio.TfdsDataSource(tfds_name=f"{builder}:1.0.0"),
        output_features={"text": seqio.Feature(seqio.ByteVocabulary())}, preprocessors=[])
    names.append(name)
  registration.replace_mixture("preparetest_mixture", names)
  yield "preparetest_mixture"
  registration.remove_with_prefix("preparetest_")


def test_prepare_builds_what_it_can_and_names_manual_downloads(two_builder_mixture, tmp_path,
                                                               capsys):
  command = ["prepare", f"--mixture={two_builder_mixture}", f"--data_dir={tmp_path}"]
  cli.run_command(command, join_job=False)
  output = capsys.readouterr().out
  assert "[1/2] prepare_test_manual:1.0.0: needs a manual download" in output
  assert "[2/2] prepare_test_numbers:1.0.0: built now" in output
  assert "Ask the authors for numbers.txt" in output
  built = tfds.load("prepare_test_numbers", split="train", data_dir=str(tmp_path))
  assert sorted(ex["text"] for ex in tfds.as_numpy(built)) == [
      f"number {i}".encode() for i in range(5)]

  assert _table_rows(output) == {"prepare_test_manual:1.0.0": prepare.MANUAL,
                                 "prepare_test_numbers:1.0.0": prepare.BUILT}

  cli.run_command(command, join_job=False)  # The second time it is ready.
  assert _table_rows(capsys.readouterr().out)["prepare_test_numbers:1.0.0"] == prepare.READY
