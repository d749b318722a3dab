"""The admin-editable pattern language of config/safety.yml, and the tokeniser it runs on.

A pattern is lowercase words separated by spaces, matched against normalised text (accents,
apostrophes and punctuation removed, see `sentences`):
- `(a|b c|)`  alternatives, each one or more words; an empty alternative makes it optional
- `word*`     any word starting with `word`
- `...`       a gap of 0 to 3 other words
Nothing else, so admins cannot write a regular expression that is slow or matches everything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from rapidfuzz import process
from rapidfuzz.distance import DamerauLevenshtein

from nlu.text import fold

GAP = "..."
GAP_WORDS = 3
_WORD = re.compile(r"^[a-z0-9]+\*?$")
_APOSTROPHES = re.compile(r"['’`´ʼ]")
_SENTENCE_BREAK = re.compile(r"[.!?;:\n]+")
_NON_WORD = re.compile(r"[^a-z0-9,]+")
_MIN_FUZZY_LENGTH = 5
_LONG_WORD = 8


class PatternError(ValueError):
    """An invalid lexicon pattern; the message says what is wrong (never patient text)."""


def _word_regex(word: str) -> str:
    if not _WORD.match(word):
        raise PatternError(f"invalid word {word!r} (use lowercase letters and digits, "
                           f"optionally ending in *)")
    if word.endswith("*"):
        stem = word[:-1]
        if len(stem) < 3:
            raise PatternError(f"prefix {word!r} is too short (at least 3 letters before *)")
        return re.escape(stem) + r"\S*"
    return re.escape(word)


def _items(pattern: str) -> list[str]:
    """Split a pattern into words, groups and gaps, checking the syntax."""
    items: list[str] = []
    position = 0
    text = pattern.strip()
    if not text:
        raise PatternError("empty pattern")
    while position < len(text):
        char = text[position]
        if char == " ":
            position += 1
        elif char == "(":
            end = text.find(")", position)
            if end < 0:
                raise PatternError("unbalanced parenthesis")
            group = text[position: end + 1]
            if "(" in group[1:]:
                raise PatternError("nested groups are not allowed")
            items.append(group)
            position = end + 1
        elif char == ")":
            raise PatternError("unbalanced parenthesis")
        else:
            end = position
            while end < len(text) and text[end] not in " ()":
                end += 1
            items.append(text[position:end])
            position = end
    if all(item == GAP for item in items):
        raise PatternError("a pattern needs at least one word")
    return items


def compile_pattern(pattern: str) -> str:
    """The regular expression for one pattern. Every fragment ends with a space and the text
    is matched with a trailing space, so matches always end at a word boundary."""
    fragments = []
    for item in _items(pattern):
        if item == GAP:
            fragments.append(rf"(?:\S+ ){{0,{GAP_WORDS}}}")
        elif item.startswith("("):
            alternatives = item[1:-1].split("|")
            optional = any(not alt.strip() for alt in alternatives)
            choices = [" ".join(_word_regex(w) for w in alt.split()) + " "
                       for alt in alternatives if alt.strip()]
            if not choices:
                raise PatternError("a group needs at least one word")
            fragments.append("(?:" + "|".join(choices) + ")" + ("?" if optional else ""))
        else:
            fragments.append(_word_regex(item) + " ")
    return r"(?<!\S)" + "".join(fragments)


def literal_words(pattern: str) -> set[str]:
    """Whole words a pattern names: the targets of misspelling correction."""
    words = set(re.findall(r"[a-z0-9*]+", pattern))
    return {word for word in words if not word.endswith("*") and word.isalpha()}


def compile_any(patterns: Iterable[str]) -> re.Pattern[str] | None:
    sources = [compile_pattern(pattern) for pattern in patterns]
    return re.compile("|".join(f"(?:{source})" for source in sources)) if sources else None


def normalise_patterns(patterns: Iterable[str]) -> list[str]:
    """Patterns as admins may write them (capitals, accents, apostrophes) in matching form."""
    return [_APOSTROPHES.sub("", fold(pattern)).strip() for pattern in patterns]


def sentences(text: str) -> list[list[str]]:
    """Normalised sentences as token lists; commas stay as tokens so that they end a
    negation's scope."""
    folded = _APOSTROPHES.sub("", fold(text))
    result = []
    for part in _SENTENCE_BREAK.split(folded):
        tokens = _NON_WORD.sub(" ", part.replace(",", " , ")).split()
        if tokens:
            result.append(tokens)
    return result


class SpellingCorrector:
    """Maps a misspelt word onto a lexicon word (Damerau-Levenshtein distance 1, or 2 for long
    words) so that "breathe", "brethe" and "seizure"/"seziure" fire the same cue. Words seen in
    ordinary non-clinical training messages are never corrected, so "cooking" does not become
    "choking"."""

    def __init__(self, vocabulary: Iterable[str], *, known: Iterable[str] = ()) -> None:
        self._vocabulary = frozenset(vocabulary)
        self._known = frozenset(known) | self._vocabulary
        self._by_length: dict[int, list[str]] = {}
        for word in self._vocabulary:
            self._by_length.setdefault(len(word), []).append(word)
        self._cache: dict[str, str] = {}

    def correct(self, token: str) -> str:
        if len(token) < _MIN_FUZZY_LENGTH or token in self._known or not token.isalpha():
            return token
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        limit = 2 if len(token) >= _LONG_WORD else 1
        candidates = [word for length in range(len(token) - limit, len(token) + limit + 1)
                      for word in self._by_length.get(length, ())]
        match = process.extractOne(token, candidates, scorer=DamerauLevenshtein.distance,
                                   score_cutoff=limit)
        best = match[0] if match else token
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[token] = best
        return best
