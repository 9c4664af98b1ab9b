"""A checkpoint that does not fit the configured model or optimizer, told in one paragraph.

A model gin of another size makes nearly every array differ: hundreds of keys. The
message names the first few of each kind with both shapes, counts the rest, and
points at the likely fix, the model sizes that the checkpoint's own run recorded in
its MODEL_DIR (config.gin). The full list goes to the log.
"""
import re
from typing import Any, Optional

from absl import logging
import tensorflow as tf

from instruct_jax.checkpoints import layout
from instruct_jax.checkpoints import orbax_trees
from instruct_jax.errors import UsageError

SHOWN_PER_KIND = 3
# `t5.T5Config.emb_dim = 64` lines of a launch record (gin.config_str() output).
_NETWORK_SIZE = re.compile(r"^([\w.]*(?:T5Config|DecoderConfig|LlamaConfig))\.(\w+) = (\d+)\s*$", re.M)


class CheckpointMismatchError(UsageError):
  """The checkpoint's arrays do not fit the configured model/optimizer: a configuration
  mistake, not corruption (a restore never walks back to an older step for it)."""


def describe(expected: Any, found: Any, what: str) -> str:
  """'12 differences between the <what> (52 arrays) and the checkpoint: 10 of another
  shape: k (checkpoint (64,), model (32,)), ... and 7 more; 2 missing from the checkpoint: ...'.

  Logs every difference (the message shows SHOWN_PER_KIND of each kind).
  """
  logging.info("Every difference between the checkpoint and the %s:\n%s", what,
               "\n".join(orbax_trees.tree_mismatches(expected, found)))
  want, have = orbax_trees.flat_shapes(expected), orbax_trees.flat_shapes(found)
  reshaped = [k for k in sorted(want.keys() & have.keys())
              if None not in (want[k], have[k]) and want[k] != have[k]]
  missing, unexpected = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
  kinds = [("of another shape", [f"{k} (checkpoint {have[k]}, model {want[k]})"
                                 for k in reshaped]),
           ("missing from the checkpoint", [f"{k} (model {want[k]})" for k in missing]),
           ("only in the checkpoint", [f"{k} (checkpoint {have[k]})" for k in unexpected])]
  parts = []
  for label, items in kinds:
    if items:
      more = f" and {len(items) - SHOWN_PER_KIND} more" if len(items) > SHOWN_PER_KIND else ""
      parts.append(f"{len(items)} {label}: {', '.join(items[:SHOWN_PER_KIND])}{more}")
  count = len(reshaped) + len(missing) + len(unexpected)
  return (f"{count} difference{'s' if count != 1 else ''} between the {what} ({len(want)} "
          "arrays) and the checkpoint: " + "; ".join(parts))


def _latest_record(model_dir: str) -> tuple[Optional[str], str]:
  """(path, text) of the newest launch record of `model_dir`; (None, "") without one."""
  try:
    path = layout.latest_config(model_dir)
    if path is None:
      return None, ""
    with tf.io.gfile.GFile(path) as f:
      return path, f.read()
  except (OSError, tf.errors.OpError):
    return None, ""


def recorded_sizes(model_dir: str) -> Optional[str]:
  """'MODEL_DIR/config.gin (t5.T5Config emb_dim=64, head_dim=16, ...)': the network sizes
  that the newest launch record of `model_dir` holds; None without a record."""
  path, text = _latest_record(model_dir)
  sizes = _NETWORK_SIZE.findall(text)
  if path is None or not sizes:
    return path
  return f"{path} ({sizes[0][0]} " + ", ".join(f"{n}={v}" for _, n, v in sizes) + ")"


def recorded_optimizer(model_dir: str) -> Optional[str]:
  """"OPTIMIZER = 'adafactor' (MODEL_DIR/config.gin)" from the newest launch record."""
  path, text = _latest_record(model_dir)
  found = re.search(r"^OPTIMIZER = (.+)$", text, re.M)
  return f"OPTIMIZER = {found.group(1).strip()} ({path})" if found else path
