"""Gin mistakes a user makes first: each fails before any work, in one message naming it."""
import glob
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import factories
import gin_configs
from instruct_jax import cli
from instruct_jax.checkpoints import layout
from instruct_jax.checkpoints import params_io
from instruct_jax.cli import gin_macros
from instruct_jax.cli import gin_setup
from instruct_jax.errors import UsageError
from instruct_jax.models.networks import decoder
from instruct_jax.train import optimizers
from instruct_jax.train.state import TrainState


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _cli_error(argv, capsys) -> str:
  """stderr of an `instruct-jax` command that must exit 1."""
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  assert exit_info.value.code == 1
  return capsys.readouterr().err


def _parse_error(files, bindings) -> str:
  gin.clear_config()
  with pytest.raises(UsageError) as error:
    gin_setup.parse_gin(files, bindings)
  return str(error.value)


# ---------------------------------------------------------------------------
# Unknown names.
# ---------------------------------------------------------------------------


def test_misspelt_macro_on_the_command_line_fails_before_any_work(capsys, tmp_path):
  model_dir = tmp_path / "run"
  err = _cli_error(["train", "--gin_file=runs/smoke.gin", f"--gin.MODEL_DIR='{model_dir}'",
                    "--gin.TRAIN_STEPS=1", "--gin.TRAIN_STEP=10"], capsys)
  assert err.strip().splitlines() == [
      "instruct-jax: error: Unknown gin macro TRAIN_STEP (--gin.TRAIN_STEP=10): no gin "
      "configuration reads it; did you mean TRAIN_STEPS?"]
  assert not model_dir.exists()


def test_misspelt_macro_in_a_gin_file_names_the_closest_ones(tmp_path):
  gin_file = tmp_path / "mine.gin"
  gin_file.write_text("include 'runs/smoke.gin'\nBATCH_SIZ = 8\n")
  message = _parse_error([str(gin_file)], [])
  assert message.startswith("Unknown gin macro BATCH_SIZ (`BATCH_SIZ = ...` in a gin file)")
  assert "did you mean BATCH_SIZE?" in message
  # A name close to nothing still says that no configuration reads it.
  message = _parse_error(["runs/smoke.gin"], ["QWXZ = 1"])
  assert "QWXZ" in message and "no gin configuration reads it" in message


def test_macros_of_another_command_are_accepted():
  # The sweep passes its --gin bindings to train and eval; a model gin sets OPTIMIZER for
  # train only. Both are macros some shipped configuration reads.
  gin_setup.parse_gin(["models/t5_1_1/tiny.gin", "runs/eval.gin"],
                      ["CHECKPOINT_PATH = '/tmp/x'", "MIXTURE_OR_TASK_NAME = 'smoke_train'",
                       "TRAIN_STEPS = 3"])


@pytest.mark.parametrize("binding, expected", [
    ("trainer.train.totl_steps=5",
     "trainer.train has no parameter totl_steps (--gin.trainer.train.totl_steps=5); "
     "did you mean total_steps?"),
    ("t5.T5Config.num_head=4",
     "t5.T5Config has no parameter num_head (--gin.t5.T5Config.num_head=4); "
     "did you mean num_heads?"),
])
def test_misspelt_parameter_is_one_line_with_close_names(binding, expected, capsys):
  err = _cli_error(["train", "--gin_file=runs/smoke.gin", f"--gin.{binding}"], capsys)
  assert err.strip().splitlines() == [f"instruct-jax: error: {expected}"]


# ---------------------------------------------------------------------------
# Wrong values.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("macro, value, expected", [
    ("TRAIN_STEPS", "'ten'", "a positive integer"),
    ("BATCH_SIZE", "32.0", "a positive integer"),
    ("LOG_PERIOD", "0", "a positive integer"),
    ("EVAL_PERIOD", "-5", "a positive integer or None"),
    ("LEARNING_RATE", "-0.1", "a positive number"),
    ("OPTIMIZER", "'sgd'", "'adafactor' or 'adamw'"),
    ("OPTIMIZER", "@optimizers.adamw()", "'adafactor' or 'adamw'"),
    ("TASK_FEATURE_LENGTHS", "{'inputs': 64.5, 'targets': 16}",
     "a dict of feature name -> positive length"),
    ("MODEL_DIR", "3", "a path string"),
    ("RESTORE_DATA_ITERATOR", "'False'", "True or False"),
    ("PACKING", "0", "True or False"),
])
def test_wrong_macro_value_names_the_macro_and_the_rule(macro, value, expected):
  message = _parse_error(["runs/smoke.gin"], [f"{macro} = {value}"])
  assert message.startswith(f"Gin macro {macro} is ")
  assert f"(--gin.{macro}=" in message and f"must be {expected}" in message
  assert f"e.g. --gin.{macro}=" in message


def test_every_wrong_value_is_reported_at_once(capsys, tmp_path):
  err = _cli_error(["train", "--gin_file=runs/smoke.gin", f"--gin.MODEL_DIR='{tmp_path}/r'",
                    "--gin.TRAIN_STEPS='ten'", "--gin.BATCH_SIZE=32.0"], capsys)
  assert "BATCH_SIZE is 32.0" in err and "TRAIN_STEPS is 'ten'" in err
  assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("model_gin, binding", [
    ("models/t5_1_1/tiny.gin", "t5.T5Config.num_heads = 4.5"),
    ("models/t5_1_1/tiny.gin", "t5.T5Config.emb_dim = 0"),
    ("models/decoder_only/tiny.gin", "decoder.DecoderConfig.scan_layers = 'yes'"),
])
def test_network_config_field_of_the_wrong_type_is_named(model_gin, binding):
  gin_setup.parse_gin([model_gin], [binding])
  field = binding.split(" = ")[0]
  with pytest.raises(UsageError, match=rf"^{field} = .* must be "):
    gin_setup.build_macro("MODEL", "a model gin")


def test_network_config_names_the_field_without_gin():
  with pytest.raises(UsageError, match=r"^decoder.DecoderConfig.num_layers = 2.0 must be a "
                                       "positive integer"):
    decoder.DecoderConfig(vocab_size=384, emb_dim=32, num_heads=4, num_layers=2.0,
                          head_dim=8, mlp_dim=64)


# ---------------------------------------------------------------------------
# A model gin that does not fit the checkpoint.
# ---------------------------------------------------------------------------


def _abstract(tree):
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)


def _tiny_params(**overrides):
  model = factories.tiny_t5(**overrides)
  return nn.meta.unbox(jax.eval_shape(
      lambda: model.init_params(jax.random.key(0), factories.input_shapes(2))))


def _state(params, optimizer="adafactor"):
  concrete = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), params)
  tx = optimizers.create(optimizer, 1e-3)
  return TrainState(step=jnp.asarray(1, jnp.int32), params=concrete,
                    opt_state=tx.init(concrete))


def test_model_gin_that_does_not_fit_the_checkpoint_is_one_paragraph(make_checkpointer,
                                                                    tmp_path):
  run = tmp_path / "run"
  make_checkpointer(run).save(1, _state(_tiny_params()))
  layout.record_config(str(run), "OPTIMIZER = 'adafactor'\nt5.T5Config.emb_dim = 64\n"
                                 "t5.T5Config.num_heads = 4\n")
  other = _state(_tiny_params(emb_dim=32))

  with pytest.raises(UsageError) as error:  # relaunching the run with another model gin
    make_checkpointer(run).restore(_abstract(other))
  message = str(error.value)
  assert "\n" not in message
  assert "of another shape: decoder/decoder_norm/scale (checkpoint (64,), model (32,))" in message
  assert " more. " in message and len(message) < 1500
  assert f"recorded its model in {run}/config.gin (t5.T5Config emb_dim=64, num_heads=4)" in message

  with pytest.raises(UsageError) as error:  # evaluating its checkpoint with another model gin
    params_io.load_params(str(run), _abstract(other.params))
  message = str(error.value)
  assert "\n" not in message and "(t5.T5Config emb_dim=64, num_heads=4)" in message

  with pytest.raises(UsageError) as error:  # relaunching it with --gin.OPTIMIZER="'adamw'"
    make_checkpointer(run).restore(_abstract(_state(_tiny_params(), "adamw")))
  message = str(error.value)
  assert "\n" not in message and "missing from the checkpoint: opt_state/0/mu/" in message
  assert (f"the optimizer differs from the one that wrote it, recorded as OPTIMIZER = "
          f"'adafactor' ({run}/config.gin)") in message


# ---------------------------------------------------------------------------
# OPTIMIZER and LEARNING_RATE.
# ---------------------------------------------------------------------------


def _configured_optimizer(bindings) -> optax.GradientTransformation:
  """What `train` receives as its optimizer under runs/pretrain.gin + the tiny model."""
  gin_setup.parse_gin(["runs/pretrain.gin", "models/t5_1_1/tiny.gin"], [
      "MIXTURE_OR_TASK_NAME = 'smoke_train'", "MODEL_DIR = '/tmp/unused'", "TRAIN_STEPS = 10",
      "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 8}", *bindings])
  return gin.get_configurable(optimizers.create)()


def test_optimizer_and_learning_rate_macros_choose_the_optimizer():
  params = {"w": jnp.ones((4,))}
  adamw = _configured_optimizer(["OPTIMIZER = 'adamw'", "LEARNING_RATE = 0.01",
                                 "optimizers.adamw.weight_decay = 0.5"])
  updates, _ = adamw.update({"w": jnp.zeros((4,))}, adamw.init(params), params)
  # Adam's step of a zero gradient is 0; what is left is the decay: -lr * 0.5 * param.
  np.testing.assert_allclose(updates["w"], -0.01 * 0.5, rtol=1e-6)

  gin.clear_config()
  adafactor = _configured_optimizer(["LEARNING_RATE = 0.01"])  # the model gin's OPTIMIZER
  assert optimizers.factored_state(adafactor.init(params)) is not None


def test_unknown_optimizer_name_lists_the_choices():
  with pytest.raises(UsageError, match="'adafactor', 'adamw'"):
    optimizers.create("sgd", 0.1)
  assert tuple(optimizers.OPTIMIZERS) == ("adafactor", "adamw")
  assert all(gin_macros.OPTIMIZER.accepts(name) for name in optimizers.OPTIMIZERS)


# ---------------------------------------------------------------------------
# Every shipped configuration passes the checks.
# ---------------------------------------------------------------------------

_SHIPPED = sorted(os.path.relpath(p, gin_configs.ROOT) for p in glob.glob(
    os.path.join(gin_configs.ROOT, "**", "*.gin"), recursive=True))
# The macros some shipped gin requires (%gin.REQUIRED), where one reads them.
_REQUIRED = [binding for binding in [
    "MODEL_DIR = '/tmp/unused'", "CHECKPOINT_PATH = '/tmp/unused'",
    "MIXTURE_OR_TASK_NAME = 'smoke_train'", "TRAIN_STEPS = 3",
    "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 8}", "INITIAL_CHECKPOINT_PATH = None",
    "TEACHER_FILE = '/tmp/unused.jsonl'", "VOCABULARY_PATH = '/tmp/unused.json'"]
             if binding.split(" = ")[0] in gin_macros.shipped_macros()]


@pytest.mark.parametrize("gin_file", [f for f in _SHIPPED if not f.startswith("models/")])
def test_every_shipped_gin_passes_the_macro_checks(gin_file):
  files = [gin_file] if gin_file.startswith("partitioning/") else [
      "models/t5_1_1/tiny.gin", gin_file]
  gin_setup.parse_gin(files, _REQUIRED)


# models/llama/base.gin is the part every Llama size includes; the sizes set its VOCABULARY.
@pytest.mark.parametrize("model_gin", [f for f in _SHIPPED if f.startswith("models/")
                                       and f != "models/llama/base.gin"])
def test_every_model_gin_passes_the_macro_checks(model_gin):
  gin_setup.parse_gin([model_gin, "runs/pretrain.gin"], _REQUIRED)
