"""Struct-to-text templates (our wording)."""
from instruct_jax.data.templates import Template

TEMPLATES = {
    "common_gen": (
        Template("Concepts: {concepts}\n\nWrite a sentence that includes all these words."),
        Template("Make a sentence using these words: {concepts}"),
        Template("Write one everyday sentence that mentions {concepts}."),
        Template("Here are some keywords: {concepts}. Describe a scene that uses them all."),
        Template("Generate a sentence with the following concepts.\n\n{concepts}"),
        Template("Combine these words into one natural sentence: {concepts}"),
        Template("Keywords: {concepts}\nSentence:"),
        Template("Can you write a sentence about a common situation using {concepts}?"),
        Template("What are the main concepts in this sentence?\n\n{answer}", "{concepts}",
                 turned_around=True),
        Template("List the key words of the following sentence, separated by commas: {answer}",
                 "{concepts}", turned_around=True),
    ),
    "dart": (
        Template("Triples: {triples}\n\nWrite a sentence that describes this data."),
        Template("Generate a sentence about the following data: {triples}"),
        Template("{triples}\n\nTurn the facts above into fluent text."),
        Template("Here is some data in subject | relation | object form: {triples}. Describe "
                 "it in words."),
        Template("Write a sentence that expresses all of these facts.\n\n{triples}"),
        Template("Data: {triples}\nSentence:"),
        Template("Verbalize this table data: {triples}"),
        Template("Produce one or two sentences that state: {triples}"),
        Template("Extract the facts in this sentence as subject | relation | object triples "
                 "separated by semicolons.\n\n{answer}", "{triples}", turned_around=True),
        Template("What data does this sentence contain? {answer}", "{triples}",
                 turned_around=True),
    ),
    "e2e_nlg": (
        Template("Attributes: {attributes}\n\nWrite a sentence about this restaurant."),
        Template("Describe a restaurant with these properties: {attributes}"),
        Template("{attributes}\n\nWrite a short restaurant description using all the "
                 "information above."),
        Template("Here is restaurant data: {attributes}. Turn it into a sentence."),
        Template("Generate a review-style sentence from: {attributes}"),
        Template("Data about a place to eat: {attributes}\nDescription:"),
        Template("Write one or two sentences that mention every attribute below.\n\n"
                 "{attributes}"),
        Template("Use this information to write about the restaurant: {attributes}"),
        Template("Turn this restaurant description into attribute: value pairs.\n\n{answer}",
                 "{attributes}", turned_around=True),
        Template("What facts about the restaurant does this sentence give? {answer}",
                 "{attributes}", turned_around=True),
    ),
    "web_nlg": (
        Template("Data: {triples}\n\nWrite a sentence that expresses these facts."),
        Template("Generate text from the following knowledge graph triples: {triples}"),
        Template("{triples}\n\nDescribe the facts above in natural language."),
        Template("Here are some facts in subject | property | object form: {triples}. Write "
                 "them as a short text."),
        Template("Verbalize: {triples}"),
        Template("Facts: {triples}\nText:"),
        Template("Write a sentence that includes all of the following information. {triples}"),
        Template("Turn these RDF triples into readable English.\n\n{triples}"),
        Template("Extract subject | property | object triples from this sentence, separated "
                 "by semicolons.\n\n{answer}", "{triples}", turned_around=True),
        Template("Which facts are stated in this text? {answer}", "{triples}",
                 turned_around=True),
    ),
}
