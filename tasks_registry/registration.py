"""Idempotent seqio registration: re-registering a name replaces it.

seqio's registries refuse a second `add` under the same name. Registry modules
call these helpers instead, so importing a module twice, `importlib.reload`-ing
it in a notebook, or registering a test copy of a task set never fails and
always leaves the newest definition in place.
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import seqio

MixingRate = Union[float, Callable[[seqio.Task], float]]


def replace_task(name: str, **task_kwargs) -> None:
  """Registers seqio.Task `name` (same kwargs as TaskRegistry.add), replacing any old one."""
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, **task_kwargs)


def replace_mixture(name: str, tasks: Sequence[Union[str, tuple[str, float]]],
                    default_rate: MixingRate | None = seqio.mixing_rate_num_examples,
                    **mixture_kwargs) -> None:
  """Registers seqio.Mixture `name` over `tasks`, replacing any old one.

  `tasks` holds task (or mixture) names, or (name, rate) pairs. The default
  rate is the number of training examples, as in seqio's own examples.
  """
  if not tasks:
    raise ValueError(f"Mixture {name!r} would be empty; give it at least one task.")
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(tasks), default_rate=default_rate, **mixture_kwargs)


def remove_with_prefix(prefix: str) -> int:
  """Unregisters every task and mixture whose name starts with `prefix`; returns the count.

  For tests that register a throw-away copy of a task set under their own prefix.
  """
  if not prefix:
    raise ValueError("remove_with_prefix needs a non-empty prefix; an empty one would "
                     "unregister every seqio task and mixture.")
  mixtures = [n for n in seqio.MixtureRegistry.names() if n.startswith(prefix)]
  tasks = [n for n in seqio.TaskRegistry.names() if n.startswith(prefix)]
  for name in mixtures:
    seqio.MixtureRegistry.remove(name)
  for name in tasks:
    seqio.TaskRegistry.remove(name)
  return len(mixtures) + len(tasks)
