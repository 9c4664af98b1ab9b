"""IPT pre-training data: rendering, rule-based mining, converted tasks and mixture shares."""
import json
import os
import random
import re

import gin
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from instruct_jax.cli import gin_setup
from instruct_jax.data.ipt import connective_mining
from instruct_jax.data.ipt import qa_datasets
from instruct_jax.data.ipt import rendering
from instruct_jax.data.ipt import synthesized_shards
from instruct_jax.data.ipt import synthesizer_format as fmt
from instruct_jax.errors import UsageError
from tasks_registry import registration
from tasks_registry.ipt import pretraining
from tasks_registry.ipt import synthesizer_tuning

BYTES = seqio.ByteVocabulary()
QA = fmt.QAPair
# The answer line of each family, read back from rendered text.
ANSWER_LINES = {
    "plain_qa": r"^Answer: ", "short_prefixes": r"^A: ", "numbered": r"^Answer \d+: ",
    "dialog": r"^Assistant: ", "exam": r"^Solution: ",
}


@pytest.fixture(autouse=True)
def _drop_test_registrations():
  yield
  registration.remove_with_prefix("test_ipt")


def sample_pairs(rng: random.Random, tag: str) -> list[QA]:
  pairs = [QA(f"What happened to {tag} {i}?", f"It moved {rng.randint(1, 99)} km.")
           for i in range(rng.randint(0, 2))]
  if rng.random() < 0.5:
    pairs.append(QA(fmt.multiple_choice_question(f"Which colour is {tag}?",
                                                 ["red", "green", "pale blue"]), "pale blue"))
  if rng.random() < 0.5:
    pairs.append(fmt.chain_of_thought_pair(f"How far in total for {tag}?",
                                           "3 km and then 4 km make 7 km.", "7 km"))
  return pairs or [QA(f"Name {tag}.", tag)]


def assert_pair_rendered(pair: QA, rendered: str):
  stem, options = fmt.split_options(pair.question)
  assert stem.replace(f" {fmt.COT_TRIGGER}", "") in rendered
  for option in options:
    assert option in rendered
  reasoning, final = fmt.split_reasoning(pair.answer)
  assert final in rendered
  assert reasoning in rendered


def test_every_pair_appears_in_every_family():
  rng = random.Random(0)
  seen_families = set()
  for chain_id in range(60):
    links = [(f"Text {chain_id}-{r} about rivers.", sample_pairs(rng, f"obj{chain_id}{r}"))
             for r in range(3)]
    rendered = rendering.render_chain(links, chain_id)
    seen_families.add(rendering.family_for_chain(chain_id).name)
    for text, pairs in links:
      assert text in rendered
      for pair in pairs:
        assert_pair_rendered(pair, rendered)
    for marker in fmt.MARKERS:
      assert marker not in rendered
  assert seen_families == set(rendering.FAMILY_NAMES)


def test_one_template_family_per_chain():
  rng = random.Random(1)
  for chain_id in range(40):
    links = [(f"Passage {r}.", sample_pairs(rng, f"t{r}")) for r in range(3)]
    rendered = rendering.render_chain(links, f"chain-{chain_id}", seed=3)
    num_pairs = sum(len(p) for _, p in links)
    counts = {name: len(re.findall(pattern, rendered, flags=re.M))
              for name, pattern in ANSWER_LINES.items()}
    family = rendering.family_for_chain(f"chain-{chain_id}", seed=3).name
    assert counts[family] == num_pairs
    assert sum(counts.values()) == num_pairs, counts
    assert rendering.render_chain(links, f"chain-{chain_id}", seed=3) == rendered


def test_text_comes_first_in_most_texts():
  text_first, total = 0, 0
  for chain_id in range(2000):
    rendered = rendering.render_chain([("THE TEXT.", [QA("Why?", "Because.")])], chain_id)
    text_first += rendered.startswith("THE TEXT.")
    total += 1
  assert abs(text_first / total - rendering.TEXT_FIRST_PROBABILITY) < 0.02


def test_encoder_decoder_split_puts_answers_in_targets():
  links = [("First text.", [QA("Who?", "Ann"), QA(fmt.multiple_choice_question(
      "Pick", ["x1", "y1"]), "y1")]), ("Second text.", [QA("When?", "In May")])]
  inputs, targets = rendering.render_chain_encoder_decoder(links, "c")
  assert inputs.index("First text.") < inputs.index("Who?") < inputs.index("Second text.")
  assert "x1" in inputs and "When?" in inputs
  for answer in ("Ann", "In May"):
    assert answer in targets and answer not in inputs
  assert len(targets.splitlines()) == 3


GENERATED_DOCUMENT = (
    "Glaciers of the North\n"
    "Snow piles up over many winters. Therefore, the lower layers are pressed into dense ice. "
    "Most glaciers move slowly. However, some surge forward several metres in a single day. "
    "A moraine is defined as a ridge of rock debris left behind by a glacier. "
    "Ice behaves like a very thick liquid. In other words, it flows under its own weight. "
    "Melting glaciers feed many rivers that people depend on for drinking water.")


def test_fallback_converter_finds_tasks_in_generated_text():
  pairs = connective_mining.mine_pairs(GENERATED_DOCUMENT, max_pairs=20)
  questions = "\n".join(p.question for p in pairs)
  assert QA("Suggest a title for this text.", "Glaciers of the North") in pairs
  assert any(p.kind == fmt.MULTIPLE_CHOICE and "dense ice" in p.question and p.answer == "yes"
             for p in pairs)
  assert any("Most glaciers move slowly." in p.question and p.answer.startswith("Some surge")
             for p in pairs)
  assert any(p.answer == "moraine" for p in pairs)
  assert any(p.answer == "a ridge of rock debris left behind by a glacier" for p in pairs)
  assert any(p.answer == "It flows under its own weight." for p in pairs)
  assert "How does this sentence from the text end?" in questions
  assert len(connective_mining.mine_pairs(GENERATED_DOCUMENT, max_pairs=3)) == 3
  assert connective_mining.mine_pairs("") == []
  # A generated corpus: every document with a connective gets at least one task.
  rng = random.Random(0)
  connectives = ["Therefore,", "However,", "In other words,", "For example,", "Thus,"]
  for i in range(50):
    doc = (f"The sample number {i} was heated for an hour. {rng.choice(connectives)} "
           f"its weight changed by {i} grams during the test.")
    assert connective_mining.mine_pairs(doc), doc


def write_chains(directory, num_chains: int, links_per_chain: int, tag: str):
  """Shards in the synthesize layout, rounds written in separate files."""
  os.makedirs(directory, exist_ok=True)
  for round_ in range(links_per_chain, 0, -1):  # later rounds first: reading orders them
    with open(os.path.join(directory, f"round{round_}.jsonl"), "w") as f:
      for chain in range(num_chains):
        record = {"text": f"{tag} chain {chain} round {round_}.",
                  "pairs": [{"question": f"Q{chain}.{round_}?", "answer": f"A{chain}.{round_}"}],
                  "round": round_, "chain_id": f"c{chain}", "doc_id": chain * 10 + round_}
        f.write(json.dumps(record) + "\n")


def test_chains_are_read_in_round_order_and_bad_lines_are_named(tmp_path):
  write_chains(tmp_path / "s", 3, 2, "DOC")
  chains = synthesized_shards.read_chains(str(tmp_path / "s"))
  assert [c.chain_id for c in chains] == ["c0", "c1", "c2"]
  assert [t for t, _ in chains[1].links] == ["DOC chain 1 round 1.", "DOC chain 1 round 2."]
  assert chains[1].links[1][1] == [QA("Q1.2?", "A1.2")]
  with open(tmp_path / "s" / "round3.jsonl", "w") as f:
    f.write("{\"text\": \"x\", \"chain_id\": 1}\nnot json\n")
  with pytest.raises(UsageError, match=r"round3.jsonl:2"):
    synthesized_shards.read_chains(str(tmp_path / "s"))
  with pytest.raises(UsageError, match="No synthesized shards"):
    synthesized_shards.read_chains(str(tmp_path / "empty"))


def test_mined_shards_feed_the_converted_task(tmp_path):
  docs = [GENERATED_DOCUMENT, "Too short to mine."]
  shards = connective_mining.write_mined_shards(docs, str(tmp_path / "mined"),
                                                documents_per_shard=1)
  assert shards == ["mined-00000.jsonl", "mined-00001.jsonl"]
  assert json.load(open(tmp_path / "mined" / "manifest.json"))["shards"] == shards
  pretraining.register_converted_task("test_ipt_mined", str(tmp_path / "mined"), BYTES)
  task = seqio.get_mixture_or_task("test_ipt_mined")
  examples = list(task.get_dataset({"targets": 4096}, shuffle=False).as_numpy_iterator())
  texts = [BYTES.decode(ex["targets"].tolist()) for ex in examples]
  assert len(texts) == 2
  assert "Glaciers of the North" in texts[0] and "moraine" in texts[0]
  assert texts[1] == docs[1]  # no tasks: the text alone
  pretraining.register_converted_task("test_ipt_mined_ed", str(tmp_path / "mined"), BYTES,
                                      architecture="encoder_decoder")
  ed = next(seqio.get_mixture_or_task("test_ipt_mined_ed").get_dataset(
      {"inputs": 4096, "targets": 512}, shuffle=False).as_numpy_iterator())
  assert "moraine" in BYTES.decode(ed["targets"].tolist())
  assert "Glaciers" in BYTES.decode(ed["inputs"].tolist())


def test_from_scratch_mixture_converts_the_configured_share_of_documents(tmp_path):
  write_chains(tmp_path / "synth", 40, 2, "CONVERTED")
  raw = tmp_path / "raw.txt"
  raw.write_text("\n\n".join(f"RAW document {i} about weather." for i in range(50)))
  name = pretraining.register_pretrain_from_scratch_mixture(
      "test_ipt_scratch", str(tmp_path / "synth"), [str(raw)], BYTES, converted_fraction=0.2)
  ds = seqio.get_mixture_or_task(name).get_dataset(
      {"targets": 1024}, shuffle=True, seed=0, num_epochs=None)
  converted_docs = raw_docs = 0
  for example in ds.take(4000).as_numpy_iterator():
    text = BYTES.decode(example["targets"].tolist())
    converted_docs += text.count("CONVERTED chain")
    raw_docs += text.startswith("RAW document")
  share = converted_docs / (converted_docs + raw_docs)
  assert abs(share - 0.2) < 0.03, share


def test_continual_mixture_is_one_to_one_by_tokens(tmp_path):
  write_chains(tmp_path / "domain", 30, 3, "DOMAIN")
  registration.replace_task(
      "test_ipt_flan_like",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices({
              "inputs": [f"Instruction {i}: say {'x' * i}" for i in range(40)],
              "targets": [f"ok {i}" for i in range(40)]}), splits=["train"]),
      preprocessors=[seqio.preprocessors.tokenize],
      output_features={k: seqio.Feature(BYTES) for k in ("inputs", "targets")})
  name = pretraining.register_continual_pretrain_mixture(
      "test_ipt_continual", str(tmp_path / "domain"), "test_ipt_flan_like", BYTES)
  ds = seqio.get_mixture_or_task(name).get_dataset(
      {"targets": 4096}, shuffle=True, seed=0, num_epochs=None)
  tokens = {"domain": 0, "instruction": 0}
  for example in ds.take(3000).as_numpy_iterator():
    text = BYTES.decode(example["targets"].tolist())
    if text.startswith("Instruction"):
      assert re.fullmatch(r"Instruction (\d+): say x* ok \1", text), text
    tokens["domain" if "DOMAIN" in text else "instruction"] += int((example["targets"] != 0).sum())
  share = tokens["instruction"] / sum(tokens.values())
  assert abs(share - 0.5) < 0.03, share


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_pretraining_gins_register_their_mixtures(tmp_path, clean_gin):
  del clean_gin
  write_chains(tmp_path / "synth", 4, 2, "CONVERTED")
  (tmp_path / "raw.txt").write_text("one raw text\n\nanother raw text")
  gin_setup.parse_gin(
      ["models/llama/tiny.gin", "experiments/ipt/pretrain_from_scratch.gin"],
      ["MODEL_DIR = '/tmp/ipt_gin_test'", f"SYNTHESIZED_DIR = '{tmp_path / 'synth'}'",
       f"RAW_TEXT_PATHS = ['{tmp_path / 'raw.txt'}']"])
  name = gin.query_parameter("%MIXTURE_OR_TASK_NAME").scoped_configurable_fn()
  assert name == "ipt_pretrain_from_scratch"
  rates = {t.name: seqio.get_mixture_or_task(name).get_rate(t)
           for t in seqio.get_mixture_or_task(name).tasks}
  assert rates == {"ipt_pretrain_from_scratch_converted": pytest.approx(0.1),
                   "ipt_pretrain_from_scratch_raw_text": pytest.approx(0.8)}
  assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == {"targets": 2048}
  registration.remove_with_prefix("ipt_pretrain_from_scratch")
  gin.clear_config()
  registration.replace_task(
      "test_ipt_instructions",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"inputs": ["Say hi."], "targets": ["hi"]}), splits=["train"]),
      preprocessors=[seqio.preprocessors.tokenize],
      output_features={k: seqio.Feature(BYTES) for k in ("inputs", "targets")})
  gin_setup.parse_gin(
      ["models/llama/tiny.gin", "experiments/ipt/continual_pretrain.gin"],
      ["MODEL_DIR = '/tmp/ipt_gin_test'", "INITIAL_CHECKPOINT_PATH = '/tmp/none'",
       f"SYNTHESIZED_DIR = '{tmp_path / 'synth'}'",
       "INSTRUCTION_MIXTURE = 'test_ipt_instructions'"])
  name = gin.query_parameter("%MIXTURE_OR_TASK_NAME").scoped_configurable_fn()
  assert name == "ipt_continual_pretrain"
  assert len(seqio.get_mixture_or_task(name).tasks) == 2
  registration.remove_with_prefix("ipt_continual_pretrain")


def test_synthesizer_tuning_data_mixes_in_as_rendered_text(tmp_path):
  write_chains(tmp_path / "synth", 10, 2, "CONVERTED")
  raw = tmp_path / "raw.jsonl"
  raw.write_text("\n".join(json.dumps({"body": f"RAW document {i}."}) for i in range(10)))
  with tfds.testing.mock_data(num_examples=4):
    name = pretraining.register_pretrain_from_scratch_mixture(
        "test_ipt_with_qa", str(tmp_path / "synth"), [str(raw)], BYTES, text_field="body",
        synthesizer_tuning_rate=0.5, synthesizer_tuning_sources=["squad"])
    mixture = seqio.get_mixture_or_task(name)
    assert mixture.get_rate(seqio.get_mixture_or_task("test_ipt_with_qa_qa_text")) == (
        pytest.approx(0.5 * (0.2 / 2 + 0.8)))
    qa_texts = [BYTES.decode(ex["targets"].tolist()) for ex in seqio.get_mixture_or_task(
        "test_ipt_with_qa_qa_text").get_dataset({"targets": 4096}, shuffle=False)
        .as_numpy_iterator()]
    examples = synthesizer_tuning.load_examples(
        qa_datasets.SOURCES_BY_NAME["squad"], "train", None)
  assert len(qa_texts) == len(examples) == 4
  for text, example in zip(qa_texts, examples):
    assert example.text in text
    for pair in example.pairs:
      assert_pair_rendered(pair, text)


def test_unset_data_paths_name_the_macro(clean_gin):
  del clean_gin
  gin_setup.parse_gin(["models/llama/tiny.gin", "experiments/ipt/pretrain_from_scratch.gin"],
                      ["MODEL_DIR = '/tmp/ipt_gin_test'"])
  with pytest.raises(UsageError, match="--gin.SYNTHESIZED_DIR="):
    gin.query_parameter("%MIXTURE_OR_TASK_NAME").scoped_configurable_fn()
