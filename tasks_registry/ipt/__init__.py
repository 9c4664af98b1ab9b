"""Instruction Pre-Training registrations: synthesizer tuning and pre-training mixtures.

Pre-training tasks are registered by functions over the user's data (see
tasks_registry/ipt/pretraining.py); the synthesizer-tuning tasks over TFDS
datasets are registered at import.
"""
from tasks_registry.ipt import pretraining  # noqa: F401
