"""Instruction synthesizer format: serialisation, parsing rules, prompts and budgets."""
import pytest

from instruct_jax.data.ipt import prompts
from instruct_jax.data.ipt import synthesizer_format as fmt
from instruct_jax.errors import UsageError

QA = fmt.QAPair


def words(text: str) -> int:
  """A stand-in tokenizer: one token per whitespace-separated piece."""
  return len(text.split())


def test_serialisation_is_the_exact_marker_format():
  pairs = [QA("What is red?", "A colour."), QA("Is grass green?", "Yes")]
  assert fmt.serialize_context("Roses are red.") == "<s> <CON> Roses are red. </CON>\n\n"
  assert fmt.serialize_pairs(pairs) == (
      "<QUE> What is red? <ANS> A colour. </END>\n\n<QUE> Is grass green? <ANS> Yes </END>")
  assert fmt.serialize_example("Roses are red.", pairs) == (
      "<s> <CON> Roses are red. </CON>\n\n<QUE> What is red? <ANS> A colour. </END>\n\n"
      "<QUE> Is grass green? <ANS> Yes </END></s>")


def test_round_trip_of_every_kind():
  mc = QA(fmt.multiple_choice_question("Which is a fruit?", ["apple", "chair  leg"]), "apple")
  cot = fmt.chain_of_thought_pair("How many legs have 2 cats?", "Each cat has 4 legs, 2 x 4 = 8.",
                                  "8")
  free = QA("Who wrote it?", "Ann.\nShe did it in 1990.")
  pairs = [free, mc, cot]
  text = fmt.serialize_pairs(pairs)
  parsed = fmt.parse_pairs(text)
  assert parsed.pairs == pairs
  assert (parsed.malformed, parsed.incomplete_tail, parsed.duplicates) == (0, False, 0)
  assert [p.kind for p in parsed.pairs] == [fmt.FREE_FORM, fmt.MULTIPLE_CHOICE,
                                            fmt.CHAIN_OF_THOUGHT]
  assert mc.question == "Which is a fruit?\nOptions:\n- apple\n- chair leg"
  assert mc.options == ("apple", "chair leg")
  assert fmt.split_options(mc.question) == ("Which is a fruit?", ("apple", "chair leg"))
  assert cot.question.endswith("Let's think step by step.")
  assert fmt.split_reasoning(cot.answer) == ("Each cat has 4 legs, 2 x 4 = 8.", "8")
  # The continuation of a prompt: the pairs of an example, then its `</s>`.
  example = fmt.serialize_example("ctx", pairs)
  continuation = example[len(fmt.serialize_context("ctx")):]
  assert fmt.parse_pairs(continuation) == fmt.ParsedPairs(pairs, 0, False, 0)


def test_parsing_rules_one_by_one():
  good = "<QUE> q1 <ANS> a1 </END>"
  cases = {
      # missing `</END>` on the last piece: dropped as an incomplete tail.
      good + "\n\n<QUE> q2 <ANS> a2 cut off": ([QA("q1", "a1")], 0, True, 0),
      # two answers in one piece.
      "<QUE> q <ANS> a <ANS> b </END>" + good: ([QA("q1", "a1")], 1, False, 0),
      # no answer marker.
      "<QUE> only a question </END>" + good: ([QA("q1", "a1")], 1, False, 0),
      # not starting with <QUE>.
      "chatter <QUE> q <ANS> a </END>" + good: ([QA("q1", "a1")], 1, False, 0),
      # empty answer and empty question.
      "<QUE> q <ANS>   </END><QUE> <ANS> a </END>" + good: ([QA("q1", "a1")], 2, False, 0),
      # nested markers inside a piece.
      "<QUE> q <QUE> q2 <ANS> a </END><QUE> q3 <ANS> a <CON> x </END>" + good:
          ([QA("q1", "a1")], 2, False, 0),
      # a duplicate question in other case and spacing is dropped, the first kept.
      good + "\n\n<QUE>  Q1 <ANS> other </END>": ([QA("q1", "a1")], 0, False, 1),
      # the end-of-example marker after the last pair is not an incomplete tail.
      good + "</s>": ([QA("q1", "a1")], 0, False, 0),
      good + "</s><s> <CON> the model started another": ([QA("q1", "a1")], 0, True, 0),
  }
  for generated, (pairs, malformed, tail, duplicates) in cases.items():
    parsed = fmt.parse_pairs(generated)
    assert (parsed.pairs, parsed.malformed, parsed.incomplete_tail,
            parsed.duplicates) == (pairs, malformed, tail, duplicates), generated


@pytest.mark.parametrize("garbage", [
    "", "   ", "</END>", "</END></END>", "<ANS></END>", "\x00\xff\ufffd</END>",
    b"\xff\xfe<QUE> \x80 <ANS> \x81 </END>", "<QUE><ANS></END>" * 50, "no markers at all",
])
def test_bad_generated_text_never_raises(garbage):
  parsed = fmt.parse_pairs(garbage)
  assert isinstance(parsed.pairs, list)
  for pair in parsed.pairs:
    assert pair.question and pair.answer


def test_garbage_bytes_parse_after_replacement():
  parsed = fmt.parse_pairs(b"<QUE> caf\xc3\xa9 \xff? <ANS> yes </END>")
  assert parsed.pairs == [QA("caf\u00e9 \ufffd?", "yes")]


def test_round_one_prompt_is_the_serialised_text_alone():
  prompt = prompts.build_prompt("A short text.", [], budget_tokens=100, count_tokens=words)
  assert prompt.inputs == "<s> <CON> A short text. </CON>\n\n"
  assert not prompt.linked
  assert prompt.num_tokens == words(prompt.inputs)


def test_chains_link_exactly_as_specified():
  first = prompts.ChainLink("Text one.", [QA("q1?", "a1")])
  prompt = prompts.build_prompt("Text two.", [first], budget_tokens=100, count_tokens=words)
  assert prompt.linked
  assert prompt.inputs == ("<s> <CON> Text one. </CON>\n\n<QUE> q1? <ANS> a1 </END></s>"
                           "<s> <CON> Text two. </CON>\n\n")
  chain = prompts.next_chain([first], prompt, prompts.ChainLink("Text two.", [QA("q2?", "a2")]))
  third = prompts.build_prompt("Text three.", chain, budget_tokens=100, count_tokens=words)
  assert third.linked
  assert third.inputs == ("<s> <CON> Text one. </CON>\n\n<QUE> q1? <ANS> a1 </END></s>"
                          "<s> <CON> Text two. </CON>\n\n<QUE> q2? <ANS> a2 </END></s>"
                          "<s> <CON> Text three. </CON>\n\n")
  # An encoder-decoder synthesizer gets the same context chain as its encoder input.
  encoder = prompts.build_prompt("Text three.", chain, budget_tokens=100, count_tokens=words,
                                 architecture="encoder_decoder")
  assert encoder.inputs == third.inputs and encoder.architecture == "encoder_decoder"
  with pytest.raises(UsageError, match="architecture"):
    prompts.build_prompt("x", [], budget_tokens=10, count_tokens=words, architecture="rnn")


def test_chain_without_pairs_or_over_budget_is_not_used():
  no_pairs = prompts.ChainLink("Text one.", [])
  prompt = prompts.build_prompt("Text two.", [no_pairs], budget_tokens=100, count_tokens=words)
  assert not prompt.linked and prompt.inputs == fmt.serialize_context("Text two.")
  assert prompts.next_chain([no_pairs], prompt, prompts.ChainLink("Text two.", [])) == [
      prompts.ChainLink("Text two.", [])]
  long = prompts.ChainLink("word " * 40, [QA("q?", "a")])
  alone = words(fmt.serialize_context("Text two."))
  linked = words(prompts.serialize_chain([long]) + fmt.serialize_context("Text two."))
  at_limit = prompts.build_prompt("Text two.", [long], budget_tokens=linked, count_tokens=words)
  assert at_limit.linked and at_limit.num_tokens == linked
  over = prompts.build_prompt("Text two.", [long], budget_tokens=linked - 1, count_tokens=words)
  assert not over.linked and over.num_tokens == alone <= linked - 1


@pytest.mark.parametrize("budget", [3, 4, 10, 33, 62])
def test_truncation_respects_the_budget_at_word_boundaries(budget):
  text = " ".join(f"w{i}" for i in range(60)) + "  \n"
  cut, truncated = prompts.truncate_to_budget(text, budget, words)
  assert truncated
  assert words(fmt.serialize_context(cut)) <= budget
  # The longest fitting prefix, ending at a word end.
  assert cut == " ".join(f"w{i}" for i in range(max(0, budget - 3)))
  prompt = prompts.build_prompt(cut, [], budget_tokens=budget, count_tokens=words)
  assert prompt.num_tokens <= budget


def test_truncation_keeps_short_text_and_rejects_impossible_budgets():
  assert prompts.truncate_to_budget("fits here", 10, words) == ("fits here", False)
  with pytest.raises(UsageError, match="budget of 2 tokens"):
    prompts.truncate_to_budget("anything at all", 2, words)


def test_truncation_with_a_character_tokenizer():
  text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20
  cut, truncated = prompts.truncate_to_budget(text, 120, len)
  assert truncated and len(fmt.serialize_context(cut)) <= 120
  assert text.startswith(cut) and not cut.endswith(" ")
  assert len(fmt.serialize_context(text[:len(cut) + 7])) > 120  # no longer prefix fits
