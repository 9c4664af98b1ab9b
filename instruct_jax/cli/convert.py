"""`instruct-jax convert`: T5 and Llama / Mistral checkpoints between Hugging Face, t5x and us.

    # Hugging Face (config.json + safetensors, sharded or not) -> our checkpoint + model gin
    instruct-jax convert --from hf --input /models/flan-t5-base --output /ckpts/flan_t5_base
    # t5x (legacy msgpack + tensorstore, or orbax) -> our checkpoint + model gin
    instruct-jax convert --from t5x --input gs://bucket/t5x_run/checkpoint_1000 --output OUT
    # any checkpoint params_io reads (ours, t5x, HF) -> Hugging Face
    instruct-jax convert --to hf --input /ckpts/flan_t5_base --output /models/tuned \
        [--gin_file=/ckpts/flan_t5_base/model.gin] [--dtype=bfloat16]

What each direction writes is described in instruct_jax.checkpoints.conversion.
"""
import os

from instruct_jax.checkpoints import conversion
from instruct_jax.cli import gin_setup


def run(args) -> None:
  if args.from_format:
    config = conversion.convert_to_ours(args.input, args.output, args.from_format,
                                        args.overwrite)
    size = conversion.released_size(config)
    print(f"Wrote params to {args.output} and its model gin "
          f"{os.path.join(args.output, conversion.MODEL_GIN_FILE)}"
          + (f" (T5 v1.1 / Flan-T5 {size}: models/t5_1_1/{size}.gin)." if size else "."),
          flush=True)
    return
  config = None
  if args.gin_file and gin_setup.macro("MODEL") is not None:
    config = conversion.network_config_of(gin_setup.build_macro("MODEL", "include a model gin."))
  conversion.convert_to_hf(args.input, args.output, config=config, dtype=args.dtype,
                           max_shard_bytes=int(args.max_shard_gb * 1e9),
                           overwrite=args.overwrite)
  print(f"Wrote Hugging Face checkpoint to {args.output}.", flush=True)
