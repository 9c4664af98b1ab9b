"""Instruction Pre-Training: synthesizer format, prompts, rendering and the rule-based fallback."""
