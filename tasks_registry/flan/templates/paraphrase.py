"""Paraphrase templates (our wording). Options are appended automatically."""
from instruct_jax.data.templates import Template

TEMPLATES = {
    "mrpc": (
        Template("Here are two sentences:\n{sentence1}\n{sentence2}\n\nDo they have the same "
                 "meaning?"),
        Template("Sentence 1: {sentence1}\nSentence 2: {sentence2}\n\nIs sentence 2 a "
                 "paraphrase of sentence 1?"),
        Template("\"{sentence1}\" and \"{sentence2}\": do these say the same thing?"),
        Template("Are the following two sentences equivalent in meaning?\n\n{sentence1}\n\n"
                 "{sentence2}"),
        Template("{sentence1}\n\n{sentence2}\n\nDo the two sentences above mean the same?"),
        Template("Decide whether the second sentence restates the first.\n\nFirst: "
                 "{sentence1}\nSecond: {sentence2}"),
        Template("Does \"{sentence2}\" express the same idea as \"{sentence1}\"?"),
        Template("News sentence A: {sentence1}\nNews sentence B: {sentence2}\n\nParaphrases?"),
        Template("Write a sentence such that the answer to \"Does it mean the same as "
                 "'{sentence1}'?\" is \"{answer}\".", "{sentence2}", turned_around=True),
        Template("Write two sentences from news articles that report on a similar event.",
                 "{sentence1}\n{sentence2}", turned_around=True),
    ),
    "qqp": (
        Template("Question 1: {question1}\nQuestion 2: {question2}\n\nAre these two questions "
                 "asking the same thing?"),
        Template("\"{question1}\" and \"{question2}\": would these questions have the same "
                 "answer?"),
        Template("Are the questions below duplicates?\n\n{question1}\n{question2}"),
        Template("{question1}\n\n{question2}\n\nDo these two questions mean the same thing?"),
        Template("Would a forum merge these two questions?\n\nA: {question1}\nB: {question2}"),
        Template("Is \"{question2}\" a rewording of \"{question1}\"?"),
        Template("First question: {question1}\nSecond question: {question2}\n\nSame intent?"),
        Template("Check whether these questions are paraphrases.\n\n{question1}\n\n"
                 "{question2}"),
        Template("Write a question such that the answer to \"Is it a duplicate of "
                 "'{question1}'?\" is \"{answer}\".", "{question2}", turned_around=True),
        Template("Write two questions someone might post on a question-answering site.",
                 "{question1}\n{question2}", turned_around=True),
    ),
    "paws_wiki": (
        Template("{sentence1}\n{sentence2}\n\nDo these sentences mean the same thing?"),
        Template("Sentence 1: {sentence1}\nSentence 2: {sentence2}\n\nAre they paraphrases of "
                 "each other?"),
        Template("Do \"{sentence1}\" and \"{sentence2}\" convey the same information?"),
        Template("Compare the sentences carefully; word order matters.\n\n{sentence1}\n\n"
                 "{sentence2}\n\nSame meaning?"),
        Template("Is the second sentence a paraphrase of the first?\n\nFirst: {sentence1}\n"
                 "Second: {sentence2}"),
        Template("{sentence1}\n\nDoes the following sentence say exactly the same thing? "
                 "{sentence2}"),
        Template("Here are two sentences that share most of their words.\n{sentence1}\n"
                 "{sentence2}\n\nDo they mean the same?"),
        Template("Are these equivalent?\n\nA: {sentence1}\nB: {sentence2}"),
        Template("Rearrange or reword the sentence below so that the answer to \"Is it a "
                 "paraphrase?\" is \"{answer}\".\n\n{sentence1}", "{sentence2}",
                 turned_around=True),
        Template("Write two encyclopedia sentences with nearly the same words.",
                 "{sentence1}\n{sentence2}", turned_around=True),
    ),
    "stsb": (
        Template("{sentence1}\n{sentence2}\n\nRate the textual similarity of these two "
                 "sentences on a scale from 0 to 5, where 0 is \"no meaning overlap\" and 5 is "
                 "\"means the same thing\"."),
        Template("On a scale of 0 to 5, how similar are \"{sentence1}\" and \"{sentence2}\"?"),
        Template("Sentence A: {sentence1}\nSentence B: {sentence2}\n\nHow close in meaning are "
                 "they (0 = unrelated, 5 = equivalent)?"),
        Template("Give a similarity score from 0 to 5 for the sentence pair below.\n\n"
                 "{sentence1}\n\n{sentence2}"),
        Template("{sentence1}\n\n{sentence2}\n\nHow much do these two sentences overlap in "
                 "meaning, from 0 to 5?"),
        Template("Do these sentences mean the same? Answer with a number from 0 (not at all) "
                 "to 5 (exactly).\n\n1. {sentence1}\n2. {sentence2}"),
        Template("Score the semantic similarity (0-5).\n\nFirst: {sentence1}\nSecond: "
                 "{sentence2}"),
        Template("How similar in meaning is \"{sentence2}\" to \"{sentence1}\"? Use a 0 to 5 "
                 "scale."),
        Template("Write a sentence whose similarity to \"{sentence1}\" is {answer} on a scale "
                 "from 0 (unrelated) to 5 (same meaning).", "{sentence2}", turned_around=True),
        Template("Here is a sentence: {sentence2}\n\nWrite another sentence that has a "
                 "similarity of {answer} out of 5 with it.", "{sentence1}",
                 turned_around=True),
    ),
}
