"""Reading comprehension with commonsense templates (our wording). Options appended."""
from instruct_jax.data.templates import Template

TEMPLATES = {
    "cosmos_qa": (
        Template("{context}\n\nQuestion: {question}"),
        Template("Read the story and answer the question.\n\n{context}\n\n{question}"),
        Template("{context}\n\nAnswer this question using commonsense: {question}"),
        Template("Context: {context}\n\nQ: {question}"),
        Template("{question}\n\nThink about this passage before you answer: {context}"),
        Template("Here is a short personal story: {context}\n\nBased on it, {question}"),
        Template("What is the most reasonable answer to \"{question}\" given the text below?\n\n"
                 "{context}"),
        Template("Passage: {context}\n\nWhich option best answers: {question}"),
        Template("{context}\n\nWrite a question about the text whose answer is \"{answer}\".",
                 "{question}", turned_around=True),
        Template("Ask a question about this passage that needs commonsense to answer, with "
                 "\"{answer}\" as its answer.\n\n{context}", "{question}",
                 turned_around=True),
    ),
    "record": (
        Template("{passage}\n\nFill in the blank (___) in this sentence: {query}"),
        Template("Read the article and complete the sentence.\n\n{passage}\n\n{query}"),
        Template("{passage}\n\nWhich entity should replace ___ in \"{query}\"?"),
        Template("Article: {passage}\n\nSentence with a missing entity: {query}\n\nWhat is "
                 "missing?"),
        Template("Complete the news summary sentence: {query}\n\nUse this article: {passage}"),
        Template("{passage}\n\nWhat goes in the blank? {query}"),
        Template("Here is a news story.\n\n{passage}\n\nFill the gap: {query}"),
        Template("Based on the passage below, who or what is \"___\" in \"{query}\"?\n\n"
                 "{passage}"),
        Template("{passage}\n\nWrite a sentence about this article that mentions {answer}.",
                 "{filled_query}", turned_around=True),
        Template("Write a follow-up sentence for this news story involving {answer}.\n\n"
                 "{passage}", "{filled_query}", turned_around=True),
    ),
}
