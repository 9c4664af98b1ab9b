"""Natural language inference templates (our wording). Options are appended automatically."""
from instruct_jax.data.templates import Template

_PREMISE_HYPOTHESIS = (
    Template("Premise: {premise}\n\nHypothesis: {hypothesis}\n\nDoes the premise entail the "
             "hypothesis?"),
    Template("{premise}\n\nBased on the paragraph above, can we conclude that "
             "\"{hypothesis}\"?"),
    Template("Read the text and decide whether the claim follows from it.\n\nText: {premise}"
             "\n\nClaim: {hypothesis}"),
    Template("{premise}\n\nQuestion: is it true that {hypothesis}"),
    Template("Suppose this is true: {premise}\n\nThen is the following also true? "
             "{hypothesis}"),
    Template("Here is a statement: \"{premise}\"\n\nIf that statement holds, does it mean that "
             "\"{hypothesis}\"?"),
    Template("Given the context below, tell me whether the sentence \"{hypothesis}\" is "
             "supported.\n\nContext: {premise}"),
    Template("{premise}\n\nCan we infer the following?\n{hypothesis}"),
    Template("Write a hypothesis for the premise below so that the answer to \"Does the premise "
             "entail the hypothesis?\" is \"{answer}\".\n\nPremise: {premise}",
             "{hypothesis}", turned_around=True),
    Template("Make up a short context and a statement about it.",
             "Context: {premise}\n\nStatement: {hypothesis}", turned_around=True),
)

TEMPLATES = {
    "anli": (
        Template("{premise}\n\nBased on the paragraph above can we conclude that "
                 "\"{hypothesis}\"?"),
        Template("Read the following paragraph and determine if the hypothesis is true.\n\n"
                 "{premise}\n\nHypothesis: {hypothesis}"),
        Template("{premise}\n\nChoose your answer: is the sentence \"{hypothesis}\" true?"),
        Template("Context: {premise}\n\nClaim: {hypothesis}\n\nIs the claim correct, "
                 "given the context?"),
        Template("Paragraph: {premise}\n\nFrom this paragraph, is it right to say that "
                 "{hypothesis}"),
        Template("Consider this text.\n\n{premise}\n\nDoes it follow that \"{hypothesis}\"?"),
        Template("{premise}\n\nUsing only the passage above, decide whether this is true: "
                 "{hypothesis}"),
        Template("Here is a premise: {premise}\n\nHere is a hypothesis: {hypothesis}\n\n"
                 "Is the hypothesis true if the premise is?"),
        Template("Read the passage and write a claim for which the question \"Is the claim "
                 "true?\" has the answer \"{answer}\".\n\n{premise}", "{hypothesis}",
                 turned_around=True),
        Template("Write a passage and then a sentence that may or may not follow from it.",
                 "{premise}\n\nSentence: {hypothesis}", turned_around=True),
    ),
    "cb": (
        Template("{premise}\n\nBased on that paragraph, can we conclude that this sentence is "
                 "true?\n{hypothesis}"),
        Template("{premise}\n\nDoes this next sentence follow, given the text above?\n"
                 "{hypothesis}"),
        Template("Dialogue or text: {premise}\n\nIs it implied that \"{hypothesis}\"?"),
        Template("Read this and answer the question.\n\n{premise}\n\nQuestion: is "
                 "\"{hypothesis}\" true?"),
        Template("Text: {premise}\n\nHypothesis: {hypothesis}\n\nIs the hypothesis entailed "
                 "by the text?"),
        Template("{premise}\n\nWould the speaker agree that {hypothesis}"),
        Template("Given the passage \"{premise}\", is it true that \"{hypothesis}\"?"),
        Template("Decide whether the second sentence can be inferred from the first.\n\n"
                 "First: {premise}\nSecond: {hypothesis}"),
        Template("Passage: {premise}\n\nWrite a sentence such that the answer to \"Is it true, "
                 "given the passage?\" is \"{answer}\".", "{hypothesis}", turned_around=True),
        Template("Write a short passage that could come from a conversation or a story, and then "
                 "a claim about it.", "{premise}\n\nClaim: {hypothesis}", turned_around=True),
    ),
    "mnli": _PREMISE_HYPOTHESIS,
    "qnli": (
        Template("Does the sentence \"{sentence}\" answer the question \"{question}\"?"),
        Template("Question: {question}\n\nSentence: {sentence}\n\nDoes the sentence contain the "
                 "answer to the question?"),
        Template("{question}\n\nIs \"{sentence}\" a correct answer to the question above?"),
        Template("Can the question \"{question}\" be answered from this sentence?\n\n"
                 "{sentence}"),
        Template("Read the sentence and say whether it answers the question.\n\nSentence: "
                 "{sentence}\nQuestion: {question}"),
        Template("Here is a question: {question}\nHere is a possible answer: {sentence}\n\n"
                 "Is the answer a good one?"),
        Template("Is the answer to \"{question}\" found in the following text?\n\n{sentence}"),
        Template("Someone asked \"{question}\" and was told \"{sentence}\" Was that a real "
                 "answer to the question?"),
        Template("Sentence: {sentence}\n\nWrite a question such that the answer to \"Does "
                 "the sentence answer the question?\" is \"{answer}\".", "{question}",
                 turned_around=True),
        Template("Write a question and a sentence from an encyclopedia article.",
                 "Question: {question}\nSentence: {sentence}", turned_around=True),
    ),
    "rte": (
        Template("{premise}\n\nQuestion with options: based on the paragraph above, can we "
                 "conclude that \"{hypothesis}\"?"),
        Template("{premise}\n\nDoes this mean that \"{hypothesis}\"?"),
        Template("Determine if the sentence is true based on the text below.\n\n{hypothesis}\n\n"
                 "{premise}"),
        Template("Premise: {premise}\nHypothesis: {hypothesis}\n\nDoes the premise entail the "
                 "hypothesis?"),
        Template("Read the text:\n\n{premise}\n\nIs this statement correct? {hypothesis}"),
        Template("{premise}\n\nIf the above is true, is it also true that {hypothesis}"),
        Template("Sentence A: {premise}\nSentence B: {hypothesis}\n\nIf sentence A is true, "
                 "must sentence B be true?"),
        Template("Check whether the second text is implied by the first.\n\nFirst text: "
                 "{premise}\n\nSecond text: {hypothesis}"),
        Template("{premise}\n\nGenerate a sentence such that the answer to \"Does the text "
                 "above entail it?\" is \"{answer}\".", "{hypothesis}", turned_around=True),
        Template("Write a news-style paragraph and a one-sentence claim about it.",
                 "{premise}\n\nClaim: {hypothesis}", turned_around=True),
    ),
    "snli": (
        Template("Premise: {premise}\nHypothesis: {hypothesis}\n\nCan we conclude that the "
                 "hypothesis is true if the premise is true?"),
        Template("\"{premise}\" Does this mean that \"{hypothesis}\"?"),
        Template("Photo caption: {premise}\n\nBased on the caption, is it true that "
                 "{hypothesis}"),
        Template("If \"{premise}\", does it logically follow that \"{hypothesis}\"?"),
        Template("Look at this description of a scene: {premise}\n\nIs the following "
                 "description of the same scene necessarily true? {hypothesis}"),
        Template("{premise}\n\nTrue or not: {hypothesis}"),
        Template("Sentence 1: {premise}\nSentence 2: {hypothesis}\n\nIs sentence 2 true, "
                 "given sentence 1?"),
        Template("Given that \"{premise}\", would you say that \"{hypothesis}\" is also "
                 "the case?"),
        Template("Write a sentence about the same scene as \"{premise}\" so that the answer to "
                 "\"Does it follow from the first sentence?\" is \"{answer}\".", "{hypothesis}",
                 turned_around=True),
        Template("Describe a photo in one sentence, then state something about it.",
                 "{premise}\n\n{hypothesis}", turned_around=True),
    ),
    "wnli": (
        Template("{sentence1}\n\nBased on the sentence above, is \"{sentence2}\" true?"),
        Template("Sentence 1: \"{sentence1}\"\n\nSentence 2: \"{sentence2}\"\n\nIs sentence 2 "
                 "true, based on sentence 1?"),
        Template("Read the sentence and decide whether the paraphrase below is implied.\n\n"
                 "{sentence1}\n\nParaphrase: {sentence2}"),
        Template("If \"{sentence1}\", can we say that \"{sentence2}\"?"),
        Template("{sentence1}\n\nDoes that mean \"{sentence2}\"?"),
        Template("Here is a sentence with a pronoun: {sentence1}\n\nIs this reading of it "
                 "correct? {sentence2}"),
        Template("Text: {sentence1}\nClaim: {sentence2}\n\nDoes the text entail the claim?"),
        Template("Assume \"{sentence1}\" is true. Is \"{sentence2}\" then true as well?"),
        Template("Rewrite the sentence below, replacing its pronoun with a noun, so that the "
                 "answer to \"Is the rewrite implied by the sentence?\" is \"{answer}\".\n\n"
                 "{sentence1}", "{sentence2}", turned_around=True),
        Template("Write a sentence containing a pronoun and a second sentence that resolves "
                 "the pronoun.", "{sentence1}\n{sentence2}", turned_around=True),
    ),
}
