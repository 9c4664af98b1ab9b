"""The TFDS datasets a seqio mixture reads: which are ready, building the rest, manual ones.

A FLAN mixture reads dozens of TFDS datasets; each must be built (`download_and_prepare`)
once before training or caching. Some cannot be downloaded by TFDS (licence forms):
those are reported with their builder's own manual-download instructions, to be placed
in `manual_dir` before the next run.
"""
from __future__ import annotations

import dataclasses
import textwrap
from typing import Callable, Iterable

import seqio
import tensorflow_datasets as tfds
from tensorflow_datasets.translate import wmt

READY = "ready"
TO_BUILD = "to build"          # --dry_run: would be downloaded and prepared
BUILT = "built now"
MANUAL = "needs a manual download"
FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class DatasetState:
  """One TFDS dataset of a mixture: its name ("glue/rte:2.0.0"), state and details."""
  name: str
  state: str
  detail: str = ""  # Manual-download instructions, or the error of a failed build.


def tfds_datasets(provider: seqio.Task | seqio.Mixture) -> dict[str, str | None]:
  """{TFDS name: its tasks' data_dir (None: TFDS's default)} of every task that reads TFDS."""
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  found = {}
  for task in tasks:
    if isinstance(task.source, seqio.TfdsDataSource):
      loader = task.source.tfds_dataset
      found.setdefault(loader.name, loader.data_dir)
  return dict(sorted(found.items()))


def _manual_instructions(builder: tfds.core.DatasetBuilder) -> str:
  """What to download by hand for `builder` ("" when nothing).

  TFDS's WMT builders carry one class-wide notice although most language pairs need
  no manual file: for them, the files their sub-datasets list are what counts.
  """
  instructions = textwrap.dedent(builder.MANUAL_DOWNLOAD_INSTRUCTIONS or "").strip()
  if instructions and isinstance(builder, wmt.WmtTranslate):
    source, _ = builder.builder_config.language_pair
    needed = {(ss, f) for subsets in builder.subsets.values() for ss in subsets
              for f in wmt.DATASET_MAP[ss].get_manual_dl_files(source)}
    if not needed:
      return ""
    instructions += "\nFiles for this language pair: " + ", ".join(
        f"{f} ({wmt.DATASET_MAP[ss].get_url(source)})" for ss, f in sorted(needed))
  return instructions


def prepare_datasets(datasets: dict[str, str | None], *, data_dir: str | None = None,
                     manual_dir: str | None = None, dry_run: bool = False,
                     progress: Callable[[str], None] = print) -> list[DatasetState]:
  """Checks (dry_run) or builds each dataset; one state per dataset, failures included.

  A dataset whose builder needs a manual download is built only when `manual_dir` is
  given; otherwise it is reported as MANUAL with the builder's instructions. A failed
  build is reported (FAILED) and the next dataset goes on.
  """
  states = []
  for index, (name, task_data_dir) in enumerate(datasets.items(), 1):
    prefix = f"[{index}/{len(datasets)}] {name}"
    try:
      builder = tfds.builder(name, data_dir=data_dir or task_data_dir)
    except Exception as e:  # pylint: disable=broad-except
      states.append(DatasetState(name, FAILED, f"{type(e).__name__}: {e}"))
      progress(f"{prefix}: {FAILED} ({type(e).__name__})")
      continue
    instructions = _manual_instructions(builder)
    if builder.is_prepared():
      state = DatasetState(name, READY)
    elif instructions and not manual_dir:
      state = DatasetState(name, MANUAL, instructions)
    elif dry_run:
      state = DatasetState(name, TO_BUILD)
    else:
      progress(f"{prefix}: building in {builder.data_dir} ...")
      try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        state = DatasetState(name, BUILT)
      except Exception as e:  # pylint: disable=broad-except
        state = DatasetState(name, FAILED, f"{type(e).__name__}: {e}")
    states.append(state)
    progress(f"{prefix}: {state.state}")
  return states


def format_table(states: Iterable[DatasetState]) -> str:
  """The final report: one row per dataset, then the instructions of each manual one."""
  states = list(states)
  width = max([len(s.name) for s in states] + [len("dataset")])
  lines = [f"{'dataset':<{width}}  state", f"{'-' * width}  {'-' * 24}"]
  lines += [f"{s.name:<{width}}  {s.state}" for s in states]
  counts = {}
  for s in states:
    counts[s.state] = counts.get(s.state, 0) + 1
  lines.append(", ".join(f"{n} {state}" for state, n in counts.items()) or "no TFDS datasets")
  for s in states:
    if s.detail:
      heading = ("Manual download for " if s.state == MANUAL else "Error of ") + s.name + ":"
      lines += ["", heading, textwrap.indent(s.detail, "  ")]
  if any(s.state == MANUAL for s in states):
    lines += ["", "Put the manual files in one directory and rerun with --manual_dir=DIR."]
  return "\n".join(lines)
