"""Translation templates (our wording), shared by all translation datasets.

The task is English -> {target_language}; the turned-around templates translate
back into English.
"""
from instruct_jax.data.templates import Template

_TRANSLATION = (
    Template("Translate to {target_language}:\n\n{source}"),
    Template("{source}\n\nTranslate this into {target_language}."),
    Template("How do you say \"{source}\" in {target_language}?"),
    Template("Translate the following {source_language} text to {target_language}.\n\n"
             "{source}"),
    Template("{source_language}: {source}\n{target_language}:"),
    Template("Please give the {target_language} translation of this sentence: {source}"),
    Template("Write this in {target_language}.\n\n{source}"),
    Template("Translate \"{source}\" from {source_language} to {target_language}."),
    Template("Translate to {source_language}:\n\n{answer}", "{source}", turned_around=True),
    Template("What does this {target_language} sentence mean in {source_language}? {answer}",
             "{source}", turned_around=True),
)

TRANSLATION_DATASETS = ("para_crawl", "wmt14_fr_en", "wmt16_cs_en", "wmt16_de_en",
                        "wmt16_fi_en", "wmt16_ro_en", "wmt16_ru_en", "wmt16_tr_en")

TEMPLATES = {name: _TRANSLATION for name in TRANSLATION_DATASETS}
