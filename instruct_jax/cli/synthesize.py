"""`instruct-jax synthesize`: instruction-response pairs for a raw corpus (IPT).

experiments/ipt/synthesize.gin is parsed after the user's gin files (the
synthesizer's model gin); the size flags are shortcuts for its macros. The corpus
and output flags go to synthesis.synthesizer.synthesize as arguments.
"""
import gin

from instruct_jax.cli import flags
from instruct_jax.cli import gin_setup
from instruct_jax.errors import UsageError
from instruct_jax.synthesis import progress
from instruct_jax.synthesis import synthesizer

# Parsed after the command line's --gin_file files, before its --gin bindings.
GIN_FILES = (flags.SYNTHESIZE_GIN,)


def run(args) -> None:
  if not args.gin_file:
    raise UsageError("synthesize needs the synthesizer's model gin and checkpoint, e.g. "
                     "--gin_file=models/llama/mistral_7b.gin "
                     "--gin.CHECKPOINT_PATH=\"'/models/synth'\".")
  bindings = [f"{name} = {getattr(args, flag)}"
              for flag, name in flags.SYNTHESIZE_FLAG_MACROS.items()
              if getattr(args, flag) is not None]
  if bindings:
    with gin.unlock_config():
      gin_setup.parse_gin([], bindings)
  if gin_setup.macro("MODEL") is None:
    raise UsageError("The gin configuration defines no MODEL macro; pass the synthesizer's "
                     "model gin, e.g. --gin_file=models/llama/mistral_7b.gin (`instruct-jax "
                     "convert --from hf` writes one next to a converted checkpoint).")
  synthesize_fn = gin_setup.configured(
      synthesizer.synthesize, f"No gin file binds `synthesizer.synthesize`; {flags.SYNTHESIZE_GIN} "
      "should.")
  try:
    result = synthesize_fn(inputs=args.input, output_dir=args.output_dir,
                           input_format=args.input_format, text_field=args.text_field,
                           tfds_split=args.tfds_split, tfds_data_dir=args.tfds_data_dir)
  except FileNotFoundError as e:
    raise UsageError(f"{e} Set --gin.CHECKPOINT_PATH to the synthesizer's checkpoint (ours, "
                     "t5x or a Hugging Face directory).") from e
  print(progress.summary(result), flush=True)
