"""`instruct-jax synthesize`: corpus shards, round chaining, the job end to end on tiny models.

A random tiny model writes mostly garbage, so the pair-collection path is checked
with known generated strings at the unit level (rounds.synthesize_shard); the
end-to-end tests run the real command on random checkpoints and check what the
job guarantees: every document exactly once, parseable records, a complete
manifest, resumption after SIGKILL, and two processes writing what one writes.
"""
import io
import json
import os
import socket
import subprocess
import sys

import flax.linen as nn
import gin
import jax
import pytest
import seqio

from instruct_jax import cli
from instruct_jax.checkpoints import params_io
from instruct_jax.cli import flags
from instruct_jax.cli import gin_setup
from instruct_jax.data.ipt import synthesizer_format as fmt
from instruct_jax.synthesis import corpus
from instruct_jax.synthesis import progress
from instruct_jax.synthesis import prompt_tokens
from instruct_jax.synthesis import rounds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QA = fmt.QAPair
NUM_DOCUMENTS = 20
# Small and fast: few new tokens, a short context, shards of 5 documents.
JOB_FLAGS = ("--max_new_tokens=8", "--context_length=160", "--documents_per_shard=5",
             "--gin.ACTIVATION_DTYPE='float32'", "--gin.PROGRESS_SECONDS=0")


def chars(text: str) -> int:
  """A stand-in tokenizer for the unit tests: one token per character."""
  return len(text)


def _record(doc_id, text, problem=None):
  return corpus.Record(doc_id, f"corpus.jsonl:{doc_id + 1}", None if problem else text, problem)


# --------------------------------------------------------------------------
# Round chaining, with known generated strings.


def test_split_parts_are_equal_and_cover_everything():
  for n in range(0, 12):
    for m in (1, 2, 3):
      parts = rounds.split_parts(list(range(n)), m)
      assert len(parts) == m and sum(parts, []) == list(range(n))
      assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_rounds_chain_texts_and_collect_pairs():
  records = [_record(0, "Text zero."), _record(1, "Text one."), _record(2, "Text two."),
             _record(3, "Text three."), _record(4, None, "not valid UTF-8"),
             _record(5, "Text five.")]
  answers = {
      "Text zero.": "<QUE> Q0? <ANS> A0. </END>\n\n<QUE> q0? <ANS> again </END></s>",
      "Text one.": "no markers at all",
      "Text two.": "<QUE> Q2? <ANS> A2. </END>\n\n<QUE> broken piece </END>\n\n<QUE> cut",
      "Text three.": "<QUE> Q3? <ANS> A3. </END></s>",
      "Text five.": "<QUE> Q5? <ANS> A5. </END></s>",
  }
  calls = []

  def generate(prompts):
    calls.append([p.inputs for p in prompts])
    texts = [p.inputs.rsplit(f"{fmt.CONTEXT_START} ", 1)[1].split(f" {fmt.CONTEXT_END}")[0]
             for p in prompts]
    return [rounds.Generation(answers[t], 10) for t in texts]

  result = rounds.synthesize_shard(records, rounds=2, budget_tokens=1000, count_tokens=chars,
                                   architecture="decoder_only", generate=generate)
  assert len(calls) == 2
  # Round 2: text 0 of part 2 follows the chain of text 0 of part 1 (which got pairs);
  # position 1 is a bad record (skipped); text 2 follows text two's chain.
  assert calls[1] == [
      fmt.serialize_example("Text zero.", [QA("Q0?", "A0.")])
      + fmt.serialize_context("Text three."),
      fmt.serialize_example("Text two.", [QA("Q2?", "A2.")]) + fmt.serialize_context("Text five.")]
  by_doc = {r["doc_id"]: r for r in result.records}
  assert sorted(by_doc) == [0, 1, 2, 3, 5]
  assert by_doc[0]["pairs"] == [{"question": "Q0?", "answer": "A0."}]
  assert by_doc[0]["duplicates"] == 1
  assert (by_doc[1]["num_pairs"], by_doc[1]["incomplete_tail"]) == (0, True)
  assert (by_doc[2]["num_pairs"], by_doc[2]["malformed"], by_doc[2]["incomplete_tail"]) == (
      1, 1, True)
  assert [(by_doc[d]["round"], by_doc[d]["chain_id"], by_doc[d]["linked"]) for d in (3, 5)] == [
      (2, 0, True), (2, 2, True)]
  assert result.counts["skipped"] == 1 and result.problems == ["corpus.jsonl:5: not valid UTF-8"]
  assert (result.counts["documents"], result.counts["pairs"],
          result.counts["documents_without_pairs"], result.counts["malformed_pieces"]) == (
              5, 4, 1, 1)


def test_chain_over_budget_or_without_pairs_starts_a_new_chain():
  records = [_record(i, f"Text {i}.") for i in range(4)]
  pairs = {"Text 0.": "<QUE> Q? <ANS> A. </END>", "Text 1.": "nothing"}

  def generate(prompts):
    return [rounds.Generation(next((v for k, v in pairs.items() if k in p.inputs[-30:]), ""), 1)
            for p in prompts]

  alone = len(fmt.serialize_context("Text 2."))
  result = rounds.synthesize_shard(records, rounds=2, budget_tokens=alone + 5,
                                   count_tokens=chars, architecture="decoder_only",
                                   generate=generate)
  second = [r for r in result.records if r["round"] == 2]
  # Text 2 would follow text 0 (which got pairs) but the chain does not fit the budget;
  # text 3 follows text 1, which got none. Both start their own chains.
  assert [(r["doc_id"], r["chain_id"], r["linked"]) for r in second] == [
      (2, 2, False), (3, 3, False)]


def test_document_longer_than_the_budget_is_truncated_and_counted():
  long_text = " ".join(f"word{i}" for i in range(100))
  seen = []

  def generate(prompts):
    seen.extend(p.num_tokens for p in prompts)
    return [rounds.Generation("", 0) for _ in prompts]

  budget = 120
  result = rounds.synthesize_shard([_record(0, long_text), _record(1, "short")], rounds=1,
                                   budget_tokens=budget, count_tokens=chars,
                                   architecture="decoder_only", generate=generate)
  assert result.counts["truncated"] == 1 and max(seen) <= budget
  kept = result.records[0]
  assert kept["truncated"] and long_text.startswith(kept["text"]) and kept["text"]


# --------------------------------------------------------------------------
# The corpus: shards, offsets, bad records with file:line.


def test_bad_records_are_reported_with_file_and_line(tmp_path):
  jsonl = tmp_path / "docs.jsonl"
  jsonl.write_bytes(b'{"text": "first"}\n'
                    b'{"text": "caf\xe9"}\n'
                    b"\n"
                    b'{"title": "no text"}\n'
                    b'{"text": "   "}\n'
                    b"not json\n"
                    b'{"text": "last"}\n')
  text = tmp_path / "docs.txt"
  text.write_bytes(b"Block one,\nstill one.\n\n\nBlock \xff two.\n\nBlock three.\n")
  spec = corpus.CorpusSpec((str(jsonl), str(text)))
  shards = corpus.plan_shards(spec, documents_per_shard=2)
  assert [(s.path, s.first_doc_id, s.num_records) for s in shards] == [
      (str(jsonl), 0, 2), (str(jsonl), 2, 2), (str(jsonl), 4, 2), (str(text), 6, 2),
      (str(text), 8, 1)]
  records = [r for s in shards for r in corpus.read_shard(s, spec)]
  assert [r.doc_id for r in records] == list(range(9))
  problems = {r.source: r.problem for r in records if r.problem}
  assert set(problems) == {f"{jsonl}:2", f"{jsonl}:4", f"{jsonl}:5", f"{jsonl}:6",
                           f"{text}:5"}
  assert "not valid UTF-8" in problems[f"{jsonl}:2"]
  assert 'missing field "text"' in problems[f"{jsonl}:4"]
  assert "--text_field" in problems[f"{jsonl}:4"]
  assert problems[f"{jsonl}:5"] == "empty document"
  assert "not valid JSON" in problems[f"{jsonl}:6"]
  assert "line 5" in problems[f"{text}:5"]
  good = [(r.source, r.text) for r in records if r.text]
  assert good == [(f"{jsonl}:1", "first"), (f"{jsonl}:7", "last"),
                  (f"{text}:1", "Block one,\nstill one."), (f"{text}:7", "Block three.")]


def test_tfds_split_is_read_by_field():
  tfds = pytest.importorskip("tensorflow_datasets")
  # Mock data ignores split slicing, so the split is one shard here.
  with tfds.testing.mock_data(num_examples=5):
    spec = corpus.CorpusSpec(("imdb_reviews",), "tfds", "text", "train")
    shards = corpus.plan_shards(spec, documents_per_shard=10)
    assert [(s.first_doc_id, s.num_records) for s in shards] == [(0, 5)]
    records = corpus.read_shard(shards[0], spec)
    assert [r.source for r in records] == [f"imdb_reviews/train[{i}]" for i in range(5)]
    assert all(isinstance(r.text, str) and r.problem is None for r in records)
    spec = corpus.CorpusSpec(("imdb_reviews",), "tfds", "body", "train")
    assert 'missing field "body"' in corpus.read_shard(shards[0], spec)[0].problem


def test_prompt_markers_become_special_ids():
  byte_vocab = seqio.ByteVocabulary()
  text = fmt.serialize_example("hi", [QA("Q", "A")]) + fmt.serialize_context("yo")
  ids = prompt_tokens.encode_prompt(byte_vocab, text, decoder_only=True)
  assert ids[0] == prompt_tokens.START_ID and byte_vocab.eos_id in ids
  # No BOS in the byte vocabulary: the start id opens the prompt, a later <s> is dropped.
  assert ids.count(prompt_tokens.START_ID) == 1
  assert byte_vocab.decode([i for i in ids if i > 1]) == text.replace("<s>", "").replace(
      "</s>", "")
  encoder_ids = prompt_tokens.encode_prompt(byte_vocab, text, decoder_only=False)
  assert prompt_tokens.START_ID not in encoder_ids  # Padding in an encoder input.

  class WithBos(seqio.ByteVocabulary):
    bos_id = 7

  assert prompt_tokens.encode_prompt(WithBos(), "<s> x</s>", decoder_only=True) == (
      [7] + byte_vocab.encode(" x") + [1])


def test_progress_line_counts_documents_tokens_and_pairs():
  stream = io.StringIO()
  line = progress.Progress(10, period_seconds=0, stream=stream)
  line.batch_decoded([rounds.Generation("<QUE> q <ANS> a </END>", 5),
                      rounds.Generation("garbage", 3)])
  line.shard_done({"skipped": 1})
  printed = stream.getvalue().splitlines()[-1]
  assert printed.startswith("synthesize: 3/10 docs (30%)")
  assert "docs/s" in printed and "gen tokens/s" in printed and "ETA" in printed
  assert "0.33 pairs/doc" in printed


def test_flag_choices_mirror_the_library():
  assert flags.SYNTHESIZE_FORMATS == corpus.FORMATS


# --------------------------------------------------------------------------
# End to end on random tiny checkpoints.


def _save_random_checkpoint(model_gin: str, directory: str) -> None:
  gin.clear_config()
  gin_setup.parse_gin([model_gin], ["ACTIVATION_DTYPE = 'float32'"])
  model = gin_setup.build_macro("MODEL", "a model gin defines it")
  lengths = model.feature_converter(pack=False).get_model_feature_lengths(
      {"inputs": 8, "targets": 8})
  shapes = {name: (1, length) for name, length in lengths.items()}
  params = nn.meta.unbox(jax.jit(lambda rng: model.init_params(rng, shapes))(
      jax.random.PRNGKey(0)))
  params_io.save_params(directory, params)
  gin.clear_config()


class _Checkpoints(dict):
  """model gin -> a random checkpoint of it, saved on first use."""

  def __init__(self, root):
    super().__init__()
    self.root = root

  def __missing__(self, model_gin):
    directory = str(self.root / model_gin.split("/")[1])
    _save_random_checkpoint(model_gin, directory)
    self[model_gin] = directory
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  return _Checkpoints(tmp_path_factory.mktemp("synthesizers"))


@pytest.fixture(scope="module")
def raw_corpus(tmp_path_factory):
  """20 short documents: 12 JSON lines and 8 multi-line text blocks."""
  root = tmp_path_factory.mktemp("corpus")
  words = "river valley wheat barley summer north green farmer grows flows".split()
  with open(root / "part-0.jsonl", "w") as f:
    for i in range(12):
      text = f"Document {i}: " + " ".join(words[(i + k) % len(words)] for k in range(6)) + "."
      f.write(json.dumps({"text": text, "id": i}) + "\n")
  with open(root / "part-1.txt", "w") as f:
    for i in range(8):
      f.write(f"Block {i} opens here.\nIt ends with {words[i]}.\n\n")
  return [str(root / "part-0.jsonl"), str(root / "part-1.txt")]


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _argv(model_gin, checkpoint, inputs, output_dir, *extra):
  return ["synthesize", f"--gin_file={model_gin}", f"--gin.CHECKPOINT_PATH='{checkpoint}'",
          *(f"--input={path}" for path in inputs), f"--output_dir={output_dir}", *JOB_FLAGS,
          *extra]


def _outputs(output_dir):
  records = []
  for name in sorted(os.listdir(output_dir)):
    if name.endswith(".jsonl"):
      with open(os.path.join(output_dir, name)) as f:
        records += [json.loads(line) for line in f]
  return records


def _check_every_document_once(output_dir, raw_corpus):
  records = _outputs(output_dir)
  assert sorted(r["doc_id"] for r in records) == list(range(NUM_DOCUMENTS))
  sources = {r["source"] for r in records}
  assert {f"{raw_corpus[0]}:{i + 1}" for i in range(12)} <= sources
  assert {f"{raw_corpus[1]}:{3 * i + 1}" for i in range(8)} <= sources
  for r in records:
    assert r["round"] in (1, 2) and r["num_pairs"] == len(r["pairs"])
    assert all(set(p) == {"question", "answer"} for p in r["pairs"])
    assert 1 <= r["generated_tokens"] <= 8
  with open(os.path.join(output_dir, "manifest.json")) as f:
    manifest = json.load(f)
  assert manifest["complete"] and manifest["totals"]["documents"] == NUM_DOCUMENTS
  return records


# The Llama network runs in the Mistral and the two-process tests below.
@pytest.mark.parametrize("model_gin", ["models/decoder_only/tiny.gin", "models/t5_1_1/tiny.gin"])
def test_synthesize_end_to_end(model_gin, checkpoints, raw_corpus, tmp_path, clean_gin, capsys):
  out = tmp_path / "out"
  cli.main(_argv(model_gin, checkpoints[model_gin], raw_corpus, out, "--batch_size=8"))
  printed = capsys.readouterr().out
  assert "docs/s" in printed and "gen tokens/s" in printed and "pairs/doc" in printed
  assert "5 shard(s) synthesized now, 0 already done" in printed
  assert "no pairs   " in printed and "malformed  " in printed
  records = _check_every_document_once(out, raw_corpus)
  # Round 2 prompts come after round 1's chains: the two parts of every 5-document shard.
  assert sum(r["round"] == 2 for r in records) == 12
  if model_gin != "models/decoder_only/tiny.gin":
    return
  before = {name: (out / name).read_bytes() for name in os.listdir(out)}
  gin.clear_config()
  cli.main(_argv(model_gin, checkpoints[model_gin], raw_corpus, out, "--batch_size=8"))
  assert "0 shard(s) synthesized now, 5 already done" in capsys.readouterr().out
  assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
  gin.clear_config()
  with pytest.raises(SystemExit):
    cli.main(_argv(model_gin, checkpoints[model_gin], raw_corpus, out, "--rounds=3"))
  error = capsys.readouterr().err
  assert "another synthesis job" in error and "rounds: 2 then, 3 now" in error


def test_bad_input_is_counted_and_named_in_the_summary(checkpoints, tmp_path, clean_gin,
                                                       capsys):
  path = tmp_path / "bad.jsonl"
  path.write_bytes(b'{"text": "fine document"}\n{"text": "\xff"}\n{"body": "x"}\n'
                   + json.dumps({"text": "long " * 400}).encode() + b"\n")
  model_gin = "models/decoder_only/tiny.gin"
  cli.main(_argv(model_gin, checkpoints[model_gin], [str(path)], tmp_path / "out",
                 "--batch_size=8", "--rounds=1"))
  printed = capsys.readouterr().out
  assert "2 record(s) skipped, 1 truncated to the prompt budget" in printed
  assert f"skipped {path}:2: not valid UTF-8" in printed
  assert f'skipped {path}:3: missing field "text"' in printed
  assert sorted(r["doc_id"] for r in _outputs(tmp_path / "out")) == [0, 3]


def _mistral_style_hf_directory(directory) -> None:
  """A random tiny MistralForCausalLM with a SentencePiece tokenizer: unk 0, bos 1, eos 2."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  sentencepiece = pytest.importorskip("sentencepiece")
  words = "river valley wheat barley summer north green farmer grows flows".split()
  sentences = [" ".join(words[(i * 7 + k) % len(words)] for k in range(8)) for i in range(200)]
  sentences += [fmt.serialize_example("a text", [QA("a question", "an answer")])] * 20
  model_file = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model_file, vocab_size=320,
      model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
      character_coverage=1.0, num_threads=1, minloglevel=2)
  os.makedirs(directory)
  with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
    f.write(model_file.getvalue())
  torch.manual_seed(0)
  config = transformers.MistralConfig(
      vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
      bos_token_id=1, eos_token_id=2, sliding_window=None, tie_word_embeddings=False)
  transformers.MistralForCausalLM(config).save_pretrained(directory)


def test_converted_hugging_face_mistral_synthesizes(raw_corpus, tmp_path, clean_gin, capsys):
  """The released synthesizer's path: convert --from hf, its SentencePiece vocabulary."""
  hf_dir, ours = str(tmp_path / "hf"), str(tmp_path / "ours")
  _mistral_style_hf_directory(hf_dir)
  cli.main(["convert", "--from", "hf", "--input", hf_dir, "--output", ours])
  model_gin = os.path.join(ours, "model.gin")
  gin.clear_config()
  cli.main(_argv(model_gin, ours, raw_corpus, tmp_path / "out", "--batch_size=8"))
  assert "5 shard(s) synthesized now" in capsys.readouterr().out
  _check_every_document_once(tmp_path / "out", raw_corpus)

  vocabulary = seqio.SentencePieceVocabulary(os.path.join(hf_dir, "tokenizer.model"))
  prompt = fmt.serialize_example("a text", [QA("q", "a")]) + fmt.serialize_context("next")
  ids = prompt_tokens.encode_prompt(vocabulary, prompt, decoder_only=True)
  # <s> and </s> are Mistral's BOS (1) and EOS (2), not the characters "<", "s", ">".
  assert ids[0] == 1 and ids.count(1) == 2 and ids.count(2) == 1
  assert ids[ids.index(2) + 1] == 1


# --------------------------------------------------------------------------
# Subprocesses: SIGKILL mid-job, then resume; two processes vs one.

# Runs the command, killing itself (SIGKILL) when the 4th batch of prompts is handed to
# the model: shard 0's two rounds are written, shard 1 is half done.
_KILLED_RUN = """
import os, signal, sys
from instruct_jax.synthesis import generator
real = generator.ModelGenerator.generate
calls = []
def generate(self, *args, **kwargs):
  calls.append(1)
  if len(calls) == 4:
    os.kill(os.getpid(), signal.SIGKILL)
  return real(self, *args, **kwargs)
generator.ModelGenerator.generate = generate
from instruct_jax import cli
cli.main(sys.argv[1:])
"""


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return env


@pytest.mark.slow
def test_sigkill_then_rerun_gives_every_document_once(checkpoints, raw_corpus, tmp_path,
                                                      clean_gin, capsys):
  model_gin = "models/decoder_only/tiny.gin"
  out = tmp_path / "out"
  argv = _argv(model_gin, checkpoints[model_gin], raw_corpus, out, "--batch_size=4")
  killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, *argv], cwd=REPO, env=_env(1),
                          capture_output=True, text=True, timeout=600)
  assert killed.returncode == -9, killed.stderr[-3000:]
  finished = sorted(n for n in os.listdir(out) if n.endswith(".counts.json"))
  assert finished == ["shard-00000-of-00005.counts.json"]
  assert not (out / "shard-00001-of-00005.jsonl").exists()

  cli.main(argv[:-1] + ["--batch_size=8"])  # This process has 8 devices.
  assert "4 shard(s) synthesized now, 1 already done" in capsys.readouterr().out
  _check_every_document_once(out, raw_corpus)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(checkpoints, raw_corpus, tmp_path):
  model_gin = "models/llama/tiny.gin"
  command = [sys.executable, "-m", "instruct_jax"]
  single = tmp_path / "single"
  argv = _argv(model_gin, checkpoints[model_gin], raw_corpus, single, "--batch_size=4")
  result = subprocess.run(command + argv, cwd=REPO, env=_env(1), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]

  multi = tmp_path / "multi"
  address = f"127.0.0.1:{_free_port()}"
  argv = _argv(model_gin, checkpoints[model_gin], raw_corpus, multi, "--batch_size=4")
  processes = [subprocess.Popen(command + argv + [
      f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (stdout, stderr) in zip(processes, outputs):
    assert p.returncode == 0, stderr[-3000:]
    assert "synthesize [process" in stdout
  # Process p took shards p, p + 2, ...: 3 and 2 of the 5.
  assert "3 shard(s) synthesized now" in outputs[0][0]
  assert "2 shard(s) synthesized now" in outputs[1][0]

  def by_doc(directory):
    return sorted(_outputs(directory), key=lambda r: r["doc_id"])

  assert by_doc(multi) == by_doc(single)
  _check_every_document_once(multi, raw_corpus)
  manifests = [json.load(open(d / "manifest.json")) for d in (single, multi)]
  assert manifests[0]["totals"] == manifests[1]["totals"]
