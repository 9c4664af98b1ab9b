"""Coreference templates (our wording). Options are appended automatically."""
from instruct_jax.data.templates import Template

TEMPLATES = {
    "definite_pronoun_resolution": (
        Template("{sentence}\n\nWho is \"{pronoun}\" in this sentence?"),
        Template("In the sentence \"{sentence}\", what does \"{pronoun}\" refer to?"),
        Template("{sentence}\n\nWho does the pronoun \"{pronoun}\" stand for?"),
        Template("Resolve the pronoun \"{pronoun}\" in the following sentence.\n\n{sentence}"),
        Template("Sentence: {sentence}\nPronoun: {pronoun}\n\nWhich candidate does the pronoun "
                 "point to?"),
        Template("Read the sentence and tell me who \"{pronoun}\" is.\n\n{sentence}"),
        Template("\"{sentence}\" Here, \"{pronoun}\" means whom?"),
        Template("Who or what is meant by \"{pronoun}\"?\n\n{sentence}"),
        Template("Write a sentence in which the pronoun \"{pronoun}\" refers to {answer}.",
                 "{sentence}", turned_around=True),
        Template("Write a sentence with two people or things where \"{pronoun}\" clearly means "
                 "{answer}.", "{sentence}", turned_around=True),
    ),
    "winogrande": (
        Template("{sentence}\n\nWhich option fits the blank (_)?"),
        Template("Fill in the blank: {sentence}"),
        Template("How does this sentence end? {sentence}"),
        Template("Choose the word that best replaces the underscore.\n\n{sentence}"),
        Template("{sentence}\n\nWho or what is \"_\"?"),
        Template("Complete the sentence with the right option.\n\n{sentence}"),
        Template("Sentence with a gap: {sentence}\n\nWhat goes in the gap?"),
        Template("Read the sentence carefully and pick the option for \"_\". {sentence}"),
        Template("Write a sentence with a blank (_) that should be filled with \"{answer}\".",
                 "{sentence}", turned_around=True),
        Template("Make up a tricky fill-in-the-blank sentence whose answer is {answer}.",
                 "{sentence}", turned_around=True),
    ),
    "wsc273": (
        Template("{sentence}\n\nWho does \"{pronoun}\" refer to?"),
        Template("In \"{sentence}\", what is \"{pronoun}\"?"),
        Template("Resolve the pronoun.\n\nSentence: {sentence}\nPronoun: {pronoun}"),
        Template("{sentence}\n\nIn the previous sentence, \"{pronoun}\" means which one?"),
        Template("Read the sentence and decide what \"{pronoun}\" stands for.\n\n{sentence}"),
        Template("Who or what does the word \"{pronoun}\" point to in this sentence? "
                 "{sentence}"),
        Template("Winograd schema: {sentence}\n\nWhat is \"{pronoun}\"?"),
        Template("\"{sentence}\"\n\nIdentify the referent of \"{pronoun}\"."),
        Template("Write a sentence where the pronoun \"{pronoun}\" refers to {answer}.",
                 "{sentence}", turned_around=True),
        Template("Write a Winograd-style sentence in which \"{pronoun}\" means {answer}.",
                 "{sentence}", turned_around=True),
    ),
}
