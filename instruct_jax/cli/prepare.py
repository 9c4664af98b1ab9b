"""`instruct-jax prepare`: build (or with --dry_run, check) the TFDS datasets of a mixture.

    instruct-jax prepare --mixture=flan_holdout_nli_train --dry_run
    instruct-jax prepare --mixture=flan_holdout_nli_train --data_dir=gs://bucket/tfds

Prints a line per dataset as it goes, then a table (ready / built now / needs a manual
download, with each manual one's instructions). instruct_jax.data.prepare does the work.
"""
from instruct_jax.data import pipeline
from instruct_jax.data import prepare


def run(args) -> None:
  provider = pipeline.get_task_or_mixture(args.mixture, args.module)
  datasets = prepare.tfds_datasets(provider)
  verb = "Checking" if args.dry_run else "Preparing"
  print(f"{verb} the {len(datasets)} TFDS dataset(s) of {args.mixture}.", flush=True)
  states = prepare.prepare_datasets(datasets, data_dir=args.data_dir, manual_dir=args.manual_dir,
                                    dry_run=args.dry_run,
                                    progress=lambda line: print(line, flush=True))
  print()
  print(prepare.format_table(states), flush=True)
