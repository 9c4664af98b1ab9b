"""Instruction Pre-Training registrations: synthesizer tuning and pre-training mixtures.

Nothing is registered at import: every task depends on the model's vocabulary
and on data the user points to, so gin calls the registration functions
(gin_configs/experiments/ipt/):

  synthesizer_tuning.register_synthesizer_tuning_tasks   TFDS QA -> synthesizer examples
  pretraining.register_pretrain_from_scratch_mixture     converted + raw documents
  pretraining.register_continual_pretrain_mixture        converted domain text + instructions
"""
from tasks_registry.ipt import pretraining  # noqa: F401
from tasks_registry.ipt import synthesizer_tuning  # noqa: F401
