"""`instruct-jax cache`: seqio tasks cached offline by Apache Beam, for USE_CACHED_TASKS=True.

    instruct-jax cache --mixture=flan_holdout_nli_train --exclude_tasks='.*_few_shot' \
        --output_cache_dir=/data/seqio_cache
    instruct-jax cache --tasks='smoke_.*' --output_cache_dir=gs://bucket/cache -- \
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://bucket/tmp

Options after `--` go to Beam unchanged; without them the DirectRunner runs here. The
pipeline itself is instruct_jax.data.cache.cache_tasks.
"""
from instruct_jax.data import cache
from instruct_jax.data import pipeline


def _patterns(value) -> list[str]:
  return [p for p in (value or "").split(",") if p]


def run(args) -> None:
  pipeline.import_registry_module(args.module)
  mixture = pipeline.get_task_or_mixture(args.mixture) if args.mixture else None
  tasks = cache.select_tasks(_patterns(args.tasks), mixture, _patterns(args.exclude_tasks))
  beam_options = [o for o in args.pipeline_options if o != "--"]
  print(f"Caching {len(tasks)} task(s) into {args.output_cache_dir} "
        f"({' '.join(beam_options) or '--runner=DirectRunner'}).", flush=True)
  outcome = cache.cache_tasks(tasks, args.output_cache_dir, beam_options,
                              overwrite=args.overwrite, min_shards=args.min_shards,
                              modules=[args.module], tfds_data_dir=args.tfds_data_dir)
  width = max(len(name) for name in outcome)
  for name, status in outcome.items():
    print(f"  {name:<{width}}  {status}")
  print(f"Train or evaluate from it with --gin.USE_CACHED_TASKS=True "
        f"--gin.CACHE_DIR=\"'{args.output_cache_dir}'\".", flush=True)
