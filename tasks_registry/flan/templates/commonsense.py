"""Commonsense templates (our wording). Options are appended automatically."""
from instruct_jax.data.templates import Template

TEMPLATES = {
    "copa": (
        Template("{premise}\n\nWhat was the {relation} of this?"),
        Template("Here is a premise: {premise}\n\nWhich option is the more likely {relation}?"),
        Template("Premise: {premise}\nQuestion: what is the {relation}?"),
        Template("{premise} What is the most plausible {relation}?"),
        Template("Pick the more likely {relation} of the following situation.\n\n{premise}"),
        Template("Situation: {premise}\n\nI am looking for its {relation}. Which one is it?"),
        Template("Read the sentence and choose its {relation}.\n\n{premise}"),
        Template("Think about this: \"{premise}\" Which of these is its {relation}?"),
        Template("Write a sentence for which \"{answer}\" is the {relation}.", "{premise}",
                 turned_around=True),
        Template("\"{answer}\" Describe something that has this sentence as its {relation}.",
                 "{premise}", turned_around=True),
    ),
    "hellaswag": (
        Template("What happens next in this paragraph?\n\n{context}"),
        Template("Continue the following story about {activity}.\n\n{context}"),
        Template("{context}\n\nHow does the description most likely continue?"),
        Template("Choose the most natural ending.\n\n{activity}: {context}"),
        Template("Here is the start of an article about {activity}: {context}\n\nWhat comes "
                 "next?"),
        Template("Complete the passage.\n\n{context}"),
        Template("{context}\n\nWhich sentence should follow?"),
        Template("Topic: {activity}\n\n{context}\n\nPick the best continuation."),
        Template("Write the beginning of a text about {activity} that could end like this: "
                 "{answer}", "{context}", turned_around=True),
        Template("Write a few sentences about {activity}.", "{context} {answer}",
                 turned_around=True),
    ),
    "piqa": (
        Template("How do I accomplish this: {goal}"),
        Template("Goal: {goal}\n\nWhich solution is more sensible?"),
        Template("I want to {goal} What should I do?"),
        Template("Choose the better way to reach the goal below.\n\n{goal}"),
        Template("{goal}\n\nWhich of these methods works?"),
        Template("Here is a practical task: {goal}\nPick the method that actually makes sense."),
        Template("Which answer describes how to do the following correctly? {goal}"),
        Template("Physical commonsense question. {goal}"),
        Template("What goal does this describe? {answer}", "{goal}", turned_around=True),
        Template("Write a task that can be done as follows: {answer}", "{goal}",
                 turned_around=True),
    ),
    "story_cloze": (
        Template("{story}\n\nWhat is the best ending for this story?"),
        Template("Read the story and choose how it ends.\n\n{story}"),
        Template("Story so far: {story}\n\nWhich sentence finishes it?"),
        Template("{story}\n\nWhat happens next?"),
        Template("Finish the short story.\n\n{story}"),
        Template("Here are the first four sentences of a story: {story}\n\nWhich fifth sentence "
                 "makes sense?"),
        Template("Choose the most coherent ending.\n\n{story}"),
        Template("{story}\n\nPick the sentence that continues the story."),
        Template("Write the first four sentences of a story that ends with: {answer}",
                 "{story}", turned_around=True),
        Template("Write a very short story.", "{story} {answer}", turned_around=True),
    ),
}
