"""Reading comprehension templates (our wording). Options are appended automatically."""
from instruct_jax.data.templates import Template

TEMPLATES = {
    "bool_q": (
        Template("{passage}\n\nCan we conclude that {question}"),
        Template("Read the passage and answer the question.\n\n{passage}\n\nQuestion: "
                 "{question}"),
        Template("{passage}\n\nBased on the text above, {question}"),
        Template("Passage: {passage}\n\nYes or no: {question}"),
        Template("Answer the question using the article.\n\nArticle: {passage}\n\n{question}"),
        Template("{question}\n\nUse this paragraph to decide: {passage}"),
        Template("Here is a Wikipedia paragraph: \"{passage}\"\n\nIs the answer to \"{question}\" "
                 "yes or no?"),
        Template("Text: {passage}\n\nAccording to the text, {question}"),
        Template("{passage}\n\nWrite a yes/no question about this passage whose answer is "
                 "\"{answer}\".", "{question}", turned_around=True),
        Template("Ask a question about the text below that can be answered with "
                 "\"{answer}\".\n\n{passage}", "{question}", turned_around=True),
    ),
    "drop": (
        Template("{passage}\n\nAnswer this question based on the passage: {question}"),
        Template("Read the text and answer the question. Some questions need counting or "
                 "arithmetic.\n\n{passage}\n\nQuestion: {question}"),
        Template("Passage: {passage}\nQuestion: {question}\nAnswer:"),
        Template("{question}\n\nFind the answer in this passage: {passage}"),
        Template("Here is an article: {passage}\n\nUsing it, answer: {question}"),
        Template("Answer the question about the text below.\n\n{passage}\n\n{question}"),
        Template("{passage}\n\n{question}"),
        Template("Text: {passage}\n\nQ: {question}\nA:"),
        Template("{passage}\n\nWrite a question about the passage whose answer is "
                 "\"{answer}\".", "{question}", turned_around=True),
        Template("Read the passage and ask something whose answer is {answer}.\n\n"
                 "{passage}", "{question}", turned_around=True),
    ),
    "multirc": (
        Template("{paragraph}\n\nQuestion: \"{question}\"\n\nResponse: \"{response}\"\n\n"
                 "Does the response correctly answer the question?"),
        Template("{paragraph}\n\nAfter reading the above, is \"{response}\" the correct answer "
                 "to the question \"{question}\"?"),
        Template("Paragraph: {paragraph}\n\nQuestion: {question}\nProposed answer: {response}"
                 "\n\nIs the proposed answer right?"),
        Template("Read the text and check the answer.\n\n{paragraph}\n\n{question}\nAnswer "
                 "given: {response}"),
        Template("{paragraph}\n\nBased on the paragraph, does the answer \"{response}\" fit the "
                 "question \"{question}\"?"),
        Template("Question: {question}\nCandidate answer: {response}\n\nUse this text to judge "
                 "the candidate: {paragraph}"),
        Template("{paragraph}\n\nSomeone was asked \"{question}\" and said \"{response}\". "
                 "Were they right?"),
        Template("Is \"{response}\" a valid answer to \"{question}\" according to the passage "
                 "below?\n\n{paragraph}"),
        Template("{paragraph}\n\nQuestion: {question}\n\nWrite a response for which the answer "
                 "to \"Is this response correct?\" is \"{answer}\".", "{response}",
                 turned_around=True),
        Template("{paragraph}\n\nWrite a question about this paragraph for which \"{response}\" "
                 "would be judged \"{answer}\" when asked whether it is a correct answer.",
                 "{question}", turned_around=True),
    ),
    "openbookqa": (
        Template("Fact: {fact}\n\nUse the fact to answer: {question}"),
        Template("{fact}\n\nGiven the fact above, answer this question. {question}"),
        Template("Here is a science fact: \"{fact}\"\n\nQuestion: {question}"),
        Template("{question}\n\nHint: {fact}"),
        Template("Answer the question, using this fact if it helps.\n\nFact: {fact}\n"
                 "Question: {question}"),
        Template("Open-book quiz. Book fact: {fact}\n\n{question}"),
        Template("Knowing that \"{fact}\", how would you complete this? {question}"),
        Template("Read the fact and then answer the question.\n\n{fact}\n\n{question}"),
        Template("Fact: {fact}\n\nWrite a question that can be answered with this fact, whose "
                 "answer is \"{answer}\".", "{question}", turned_around=True),
        Template("Write a general science fact that helps answer: {question} (answer: "
                 "{answer})", "{fact}", turned_around=True),
    ),
    "squad": (
        Template("Read this and answer the question. If the question cannot be answered from "
                 "the text, say \"unanswerable\".\n\n{context}\n\n{question}"),
        Template("{context}\n\nQuestion: {question}"),
        Template("Article about {title}:\n\n{context}\n\nAnswer this question about the "
                 "article: {question}"),
        Template("Answer a question about this text on {title}.\n\n{context}\n\n{question}"),
        Template("Context: {context}\nQuestion: {question}\nAnswer:"),
        Template("{question}\n\nFind the answer in the passage below.\n\n{context}"),
        Template("Here is a paragraph from Wikipedia on {title}: {context}\n\nWhat is the "
                 "answer to \"{question}\"?"),
        Template("Passage: {context}\n\nUsing the passage, answer: {question}"),
        Template("{context}\n\nWrite a question about the passage above whose answer is "
                 "\"{answer}\".", "{question}", turned_around=True),
        Template("Article on {title}:\n\n{context}\n\nAsk a question about the article. The "
                 "answer should be: {answer}", "{question}", turned_around=True),
    ),
}
