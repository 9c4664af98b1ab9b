"""Everything that reads or writes checkpoints, so train/ and eval/ never touch a format.

  layout                MODEL_DIR's on-disk names, run.json and the per-launch config records
  lease                 the single-writer lease MODEL_DIR/lease.json
  run_checkpointer      saving / restoring a training run (orbax TrainState + data position)
  params_io             params only, from any known format (ours, t5x, Hugging Face)
  orbax_trees           tree-metadata checks shared by the two above
  adafactor_carry_over  seeding Adafactor statistics from a t5x checkpoint
  t5x, hf               the foreign format readers (and the Hugging Face writer)
  conversion            the library half of `instruct-jax convert`
"""
