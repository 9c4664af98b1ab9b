"""Miscellaneous-cluster templates (our wording). Options are appended automatically."""
from instruct_jax.data.templates import Template

TEMPLATES = {
    "quac": (
        Template("{background}\n\n{context}\n\nAnswer this question about {title}: {question}"),
        Template("Read the section about {title} and answer the question. Say "
                 "\"unanswerable\" if the text does not say.\n\n{context}\n\nQ: {question}"),
        Template("Background: {background}\n\nSection text: {context}\n\nQuestion: "
                 "{question}\nAnswer:"),
        Template("{context}\n\nBased on the text above, {question}"),
        Template("Topic: {title}\n{context}\n\nQuote the part of the text that answers: "
                 "{question}"),
        Template("Here is some information about {title}. {background}\n\nAnd here is more "
                 "detail: {context}\n\nWhat is the answer to \"{question}\"?"),
        Template("Answer the question by copying a span from the passage.\n\nPassage: "
                 "{context}\n\nQuestion: {question}"),
        Template("{question}\n\nFind the answer in this text about {title}: {context}"),
        Template("{context}\n\nWrite a question about {title} that this passage answers with: "
                 "{answer}", "{question}", turned_around=True),
        Template("Background on {title}: {background}\n\nWrite a short passage that answers "
                 "the question \"{question}\".", "{context}", turned_around=True),
    ),
    "coqa": (
        Template("{story}\n\nAnswer these questions in order:\n{questions}"),
        Template("Read the story and answer the numbered questions.\n\n{story}\n\n"
                 "{questions}"),
        Template("Story: {story}\n\nQuestions:\n{questions}\n\nGive a numbered answer for "
                 "each."),
        Template("{questions}\n\nAnswer the questions above using this text: {story}"),
        Template("Here is a passage: {story}\n\nNow a conversation about it. Answer each "
                 "question briefly.\n{questions}"),
        Template("{story}\n\n{questions}\n\nNumbered answers:"),
        Template("Text: {story}\n\nReply to these follow-up questions one by one:\n"
                 "{questions}"),
        Template("Use the story to answer the list of questions.\n\nStory: {story}\n\n"
                 "{questions}"),
        Template("{story}\n\nWrite the questions that these numbered answers respond to:\n"
                 "{answer}", "{questions}", turned_around=True),
        Template("Write a short story for which these questions make sense:\n{questions}",
                 "{story}", turned_around=True),
    ),
    "wic": (
        Template("Does the word \"{word}\" mean the same thing in \"{sentence1}\" and "
                 "\"{sentence2}\"?"),
        Template("Sentence 1: {sentence1}\nSentence 2: {sentence2}\n\nIs \"{word}\" used with "
                 "the same meaning in both sentences?"),
        Template("Here is a word: {word}\n\nFirst use: {sentence1}\nSecond use: {sentence2}\n\n"
                 "Do the two uses share a meaning?"),
        Template("{sentence1}\n{sentence2}\n\nIn these two sentences, does \"{word}\" have the "
                 "same sense?"),
        Template("Decide whether the target word has one meaning in both sentences.\n\nWord: "
                 "{word}\nA: {sentence1}\nB: {sentence2}"),
        Template("Is the meaning of \"{word}\" the same in the following sentences?\n\n"
                 "{sentence1}\n\n{sentence2}"),
        Template("Word sense check for \"{word}\": \"{sentence1}\" versus \"{sentence2}\"."),
        Template("The word \"{word}\" appears twice below. Same meaning or not?\n\n"
                 "{sentence1}\n{sentence2}"),
        Template("Write two sentences that use the word \"{word}\" with {answer}.",
                 "{sentence1}\n{sentence2}", turned_around=True),
        Template("Here is a sentence: {sentence1}\n\nWrite another sentence that uses "
                 "\"{word}\" so that the two uses have {answer}.", "{sentence2}",
                 turned_around=True),
    ),
    "trec": (
        Template("What kind of thing would answer the question \"{question}\"?"),
        Template("Classify this question by the type of its answer.\n\n{question}"),
        Template("{question}\n\nIs this question asking for a description, an entity, an "
                 "abbreviation, a person, a number, or a location?"),
        Template("Question: {question}\n\nWhat type of answer does it expect?"),
        Template("Which category best describes the question below?\n\n{question}"),
        Template("Determine the answer type of this question: {question}"),
        Template("\"{question}\" The answer to this would be a(n) what?"),
        Template("Question classification. {question}"),
        Template("Write a question whose answer type is: {answer}.", "{question}",
                 turned_around=True),
        Template("Ask something that should be answered with a(n) {answer}.", "{question}",
                 turned_around=True),
    ),
    "cola": (
        Template("Sentence: \"{sentence}\"\n\nWould a linguist rate this sentence as "
                 "grammatically acceptable?"),
        Template("Is the following sentence grammatically correct?\n\n{sentence}"),
        Template("{sentence}\n\nIs this a well-formed English sentence?"),
        Template("Check the grammar of this sentence: {sentence}"),
        Template("Judge the acceptability of the sentence below.\n\n{sentence}"),
        Template("Does \"{sentence}\" sound grammatical to a native speaker?"),
        Template("Grammaticality test. {sentence}"),
        Template("{sentence}\n\nHow would you classify this sentence's grammar?"),
        Template("Write a grammatically {answer} English sentence.", "{sentence}",
                 turned_around=True),
        Template("Give an example of a sentence that is {answer} to a linguist.",
                 "{sentence}", turned_around=True),
    ),
    "math_dataset": (
        Template("{question}"),
        Template("Solve this math problem.\n\n{question}"),
        Template("Math problem: {question}\nAnswer:"),
        Template("{question}\n\nWhat is the solution?"),
        Template("Work out the answer: {question}"),
        Template("Please solve: {question}"),
        Template("Algebra question. {question}"),
        Template("Find the value asked for. {question}"),
        Template("Write a linear equation problem in one variable whose answer is {answer}.",
                 "{question}", turned_around=True),
        Template("Make up an algebra exercise with the solution {answer}.", "{question}",
                 turned_around=True),
    ),
    "fix_punct": (
        Template("Add punctuation to this sentence: {no_punct}"),
        Template("{no_punct}\n\nRewrite the text above with the correct punctuation."),
        Template("Punctuate the following: {no_punct}"),
        Template("This sentence lost its punctuation. Please restore it.\n\n{no_punct}"),
        Template("Fix the punctuation: {no_punct}"),
        Template("Insert commas, periods and other punctuation marks where they belong.\n\n"
                 "{no_punct}"),
        Template("Text without punctuation: {no_punct}\nWith punctuation:"),
        Template("Can you correct the punctuation of \"{no_punct}\"?"),
        Template("Remove all punctuation from this sentence: {answer}", "{no_punct}",
                 turned_around=True),
        Template("Strip the punctuation marks out of the text below.\n\n{answer}",
                 "{no_punct}", turned_around=True),
    ),
}
