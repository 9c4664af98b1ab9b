"""Carrying t5x's Adafactor statistics over into a fresh optimizer state.

For fine-tuning a released t5x checkpoint while keeping its second moments, as
t5x does when it restores a full optimizer (CARRY_ADAFACTOR_STATE).
"""
from collections.abc import Mapping
import dataclasses
from typing import Any, Optional

from absl import logging
from etils import epath
from flax import traverse_util
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from instruct_jax.checkpoints import layer_layout
from instruct_jax.checkpoints import orbax_trees
from instruct_jax.checkpoints import params_io
from instruct_jax.checkpoints import t5x
from instruct_jax.train import optimizers


@dataclasses.dataclass(frozen=True)
class AdafactorCarryOver:
  """What `load_adafactor_state` took from the checkpoint, and what it left fresh."""
  step: Optional[int]
  carried: tuple[str, ...]
  skipped: tuple[str, ...]

  def summary(self) -> str:
    lines = [f"Adafactor statistics carried over for {len(self.carried)} params"
             + (f" (second-moment decay continues from step {self.step})"
                if self.step is not None else "")
             + f"; {len(self.skipped)} kept fresh."]
    lines += [f"  fresh: {reason}" for reason in self.skipped]
    return "\n".join(lines)


_ADAFACTOR_FIELDS = ("v_row", "v_col", "v")


def load_adafactor_state(path: str, opt_state: Any, carry_count: bool = True
                         ) -> tuple[Any, AdafactorCarryOver]:
  """`opt_state` with its Adafactor v_row / v_col / v taken from a t5x checkpoint.

  For fine-tuning from a released t5x checkpoint while keeping its second-moment
  statistics, as t5x does when it restores a full optimizer. `opt_state` is the
  fresh state of this run's optimizer (optimizers.adafactor or
  optax.adafactor), e.g. `trainer.state_from_params(params).opt_state`; each
  statistic is copied when the checkpoint has it with the same shape (t5x and
  optax factor a 2-D parameter the same way), onto the same sharding, and left
  fresh otherwise (listed in the returned report). With `carry_count`, the
  FactoredState's count becomes the checkpoint's step, so the decay
  1 - (step + 1)^-0.8 continues where pretraining stopped instead of restarting
  at 0 (which would overwrite the statistics at the first update); the
  learning-rate schedule's own count is untouched.
  """
  fmt, location = params_io.detect_checkpoint_format(path)
  if fmt == params_io.T5X_LEGACY:
    checkpoint = t5x.LegacyCheckpoint(str(location))
    param_states, step = checkpoint.param_states, checkpoint.step
  elif fmt == params_io.T5X_ORBAX:
    param_states, step = _read_t5x_orbax_state(location)
  else:
    raise ValueError(
        f"{location} is a {fmt} checkpoint; Adafactor statistics can be carried over from "
        f"t5x checkpoints ({params_io.T5X_LEGACY} or {params_io.T5X_ORBAX}). To continue one of our own runs "
        "with its optimizer state, resume it from its MODEL_DIR instead.")

  factored = optimizers.factored_state(opt_state)
  # t5x stores statistics per layer; a scanned model keeps them stacked per layer.
  param_states = layer_layout.match_layout(param_states, factored.v_row)
  flat_states = {"/".join(k): v for k, v in traverse_util.flatten_dict(
      param_states, is_leaf=lambda _, node: _is_param_state(node)).items()
                 if _is_param_state(v)}
  carried, skipped = [], []
  new_fields = {}
  for field in _ADAFACTOR_FIELDS:
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(getattr(factored, field))
    new_leaves = []
    for key_path, leaf in leaves_with_path:
      name = jax.tree_util.keystr(key_path, simple=True, separator="/")
      source = flat_states.get(name, {}).get(field)
      in_use = tuple(leaf.shape) != (1,)
      if source is not None and tuple(source.shape) == tuple(leaf.shape):
        value = np.asarray(source).astype(leaf.dtype)
        sharding = getattr(leaf, "sharding", None)
        new_leaves.append(jax.device_put(value, sharding) if sharding is not None else value)
        if in_use:
          carried.append(f"{name}: {field}")
      else:
        new_leaves.append(leaf)
        if in_use:
          reason = ("not in the checkpoint" if source is None else
                    f"checkpoint shape {tuple(source.shape)} != {tuple(leaf.shape)}")
          skipped.append(f"{name}: {field} ({reason})")
    new_fields[field] = jax.tree.unflatten(treedef, new_leaves)
  if carry_count and step is not None:
    count = factored.count
    value = np.asarray(step, dtype=count.dtype)
    new_fields["count"] = (jax.device_put(value, count.sharding)
                           if getattr(count, "sharding", None) is not None else value)
  replacement = factored._replace(**new_fields)
  new_state = jax.tree.map(
      lambda node: replacement if isinstance(node, optax.FactoredState) else node,
      opt_state, is_leaf=lambda node: isinstance(node, optax.FactoredState))
  report = AdafactorCarryOver(step=step if carry_count else None, carried=tuple(carried),
                              skipped=tuple(skipped))
  logging.info("%s", report.summary())  # The one place it is logged; callers need not.
  return new_state, report


def _is_param_state(node: Any) -> bool:
  return isinstance(node, Mapping) and any(f in node for f in _ADAFACTOR_FIELDS)


def _read_t5x_orbax_state(state_dir: epath.Path) -> tuple[dict[str, Any], Optional[int]]:
  """(param_states as numpy, step) of a t5x orbax checkpoint."""
  saved = orbax_trees.saved_tree(state_dir)
  state = saved.get("state") or {}
  item = {"state": {k: v for k, v in state.items() if k in ("step", "param_states")}}
  item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), item)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  with ocp.PyTreeCheckpointer() as reader:
    restored = reader.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))["state"]
  step = restored.get("step")
  return restored.get("param_states") or {}, (None if step is None else int(np.asarray(step)))
