"""`instruct-jax inspect`: a mixture's tasks, mixing rates, example counts and sample prompts.

    instruct-jax inspect --mixture=smoke_train
    instruct-jax inspect --mixture=flan_holdout_nli_train --cache_dir=/data/seqio_cache

(Named inspect_mixture so that it does not shadow the standard library's `inspect`.)
instruct_jax.data.mixture_inspection does the work.
"""
from instruct_jax.data import mixture_inspection
from instruct_jax.data import pipeline


def run(args) -> None:
  provider = pipeline.get_task_or_mixture(args.mixture, args.module)
  summaries = mixture_inspection.summarize(provider, args.split, args.num_examples,
                                           args.cache_dir)
  print(mixture_inspection.format_report(args.mixture, args.split, summaries), flush=True)
