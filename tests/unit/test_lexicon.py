"""The safety lexicon's pattern language and tokeniser."""

from __future__ import annotations

import re

import pytest

from nlu.lexicon import PatternError, SpellingCorrector, compile_pattern, sentences


def matches(pattern: str, text: str) -> bool:
    line = " ".join(token for sentence in sentences(text) for token in sentence) + " "
    return re.search(compile_pattern(pattern), line) is not None


@pytest.mark.parametrize(("pattern", "text", "expected"), [
    ("chest (pain|pressure)", "I have CHEST PRESSURE", True),
    ("chest (pain|pressure)", "chest x-ray tomorrow", False),
    ("(my|the|) chest hurts", "chest hurts", True),
    ("bleed*", "it keeps bleeding", True),
    ("cant ... breath*", "I can't really catch my breath", True),
    ("cant ... breath*", "can't come, the baby needs a bath and breathing treatment", False),
    ("dolor de pecho", "Tengo DOLOR DE PÉCHO", True),
    ("stroke", "strokes", False),  # whole words only
])
def test_patterns_match_whole_normalised_words(pattern: str, text: str, expected: bool) -> None:
    assert matches(pattern, text) is expected


@pytest.mark.parametrize(("pattern", "problem"), [
    ("(chest pain", "unbalanced"),
    ("chest) pain", "unbalanced"),
    ("((a|b))", "nested"),
    ("chest [pain]", "invalid word"),
    ("ab*", "too short"),
    ("...", "at least one word"),
    ("", "empty"),
])
def test_invalid_patterns_are_refused_with_the_reason(pattern: str, problem: str) -> None:
    with pytest.raises(PatternError, match=problem):
        compile_pattern(pattern)


def test_sentences_split_on_punctuation_and_keep_commas_as_tokens() -> None:
    assert sentences("No fever, but my dad's face is drooping! Help.") == [
        ["no", "fever", ",", "but", "my", "dads", "face", "is", "drooping"], ["help"]]


def test_spelling_correction_targets_lexicon_words_only() -> None:
    corrector = SpellingCorrector(["breathe", "seizure", "choking", "unresponsive"],
                                  known=["cooking"])
    assert corrector.correct("brethe") == "breathe"
    assert corrector.correct("siezure") == "seizure"  # transposition
    assert corrector.correct("unresponsve") == "unresponsive"
    assert corrector.correct("cooking") == "cooking"  # a known ordinary word stays
    assert corrector.correct("pain") == "pain"  # short words are never corrected
    assert corrector.correct("appointment") == "appointment"
