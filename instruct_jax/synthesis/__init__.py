"""`instruct-jax synthesize`: instruction-response pairs for a raw corpus (IPT)."""
