"""The admin-editable pattern language of config/safety.yml, and the tokeniser it runs on.

A pattern is lowercase words separated by spaces, matched against normalised text (accents,
apostrophes and punctuation removed, see `sentences`):
- `(a|b c|)`  alternatives, each one or more words; an empty alternative makes it optional
- `word*`     any word starting with `word`
- `...`       a gap of 0 to 4 other words
- `#`         a number ("took # pills" matches "took 30 pills")
Nothing else, so admins cannot write a regular expression that is slow or matches everything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from rapidfuzz import process
from rapidfuzz.distance import OSA

from bot.core.errors import PatientbotError
from nlu.text import fold_words

T = TypeVar("T")
GAP = "..."
NUMBER = "#"
GAP_WORDS = 4
_WORD = re.compile(r"^[a-z0-9]+\*?$")
_SENTENCE_BREAK = re.compile(r"[.!?;:\n]+")
_NON_WORD = re.compile(r"[^a-z0-9,]+")
_MIN_FUZZY_LENGTH = 5
_LONG_WORD = 9  # two typos allowed from this length ("visiting" must not become "vomiting")


class PatternError(PatientbotError, ValueError):
    """An invalid lexicon pattern; the message says what is wrong (never patient text)."""


def _word_regex(word: str) -> str:
    if word == NUMBER:
        return r"\d+"
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
    if all(item in (GAP, NUMBER) for item in items):
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


def prefix_stems(pattern: str) -> set[str]:
    return {word[:-1] for word in re.findall(r"[a-z0-9]+\*", pattern)}


def literal_words(pattern: str) -> set[str]:
    """Whole words a pattern names: the targets of misspelling correction."""
    words = set(re.findall(r"[a-z0-9*]+", pattern))
    return {word for word in words if not word.endswith("*") and word.isalpha()}


def anchors(pattern: str) -> tuple[frozenset[str], frozenset[str]]:
    """Words (and word prefixes) of which a matching sentence must contain at least one,
    taken from the most selective required word or group (longest words: "chest" rather than
    "my"). The screen tries a pattern only on sentences that contain an anchor."""
    best: list[str] = []
    best_length = 0
    for item in _items(pattern):
        if item in (GAP, NUMBER):
            continue
        alternatives = item[1:-1].split("|") if item.startswith("(") else [item]
        if any(not alt.strip() for alt in alternatives):
            continue  # optional: not required
        # Every word of an alternative is required; its longest one is the most selective.
        chosen = [max((w for w in alt.split() if w != NUMBER), key=lambda w: len(w.rstrip("*")),
                      default="") for alt in alternatives]
        if "" in chosen:
            continue
        length = min(len(word.rstrip("*")) for word in chosen)
        if length > best_length:
            best, best_length = chosen, length
    return (frozenset(w for w in best if not w.endswith("*")),
            frozenset(w[:-1] for w in best if w.endswith("*")))


class PatternSet(Generic[T]):
    """Compiled patterns, each with a payload, indexed by their anchor words: a sentence is
    matched only against patterns whose anchor it contains. (One big alternation is many
    times slower in Python's `re`.)"""

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        self._entries: list[tuple[re.Pattern[str], T]] = []
        self._by_word: dict[str, list[int]] = {}
        self._by_prefix: dict[str, list[tuple[str, int]]] = {}
        self._always: list[int] = []
        for index, (pattern, payload) in enumerate(entries):
            self._entries.append((re.compile(compile_pattern(pattern)), payload))
            words, prefixes = anchors(pattern)
            if not words and not prefixes:
                self._always.append(index)
            for word in words:
                self._by_word.setdefault(word, []).append(index)
            for prefix in prefixes:
                self._by_prefix.setdefault(prefix[:3], []).append((prefix, index))

    def _candidates(self, tokens: list[str]) -> list[int]:
        found = set(self._always)
        for token in set(tokens):
            found.update(self._by_word.get(token, ()))
            for prefix, index in self._by_prefix.get(token[:3], ()):
                if token.startswith(prefix):
                    found.add(index)
        return sorted(found)

    def matches(self, tokens: list[str]) -> Iterator[tuple[re.Match[str], T]]:
        """Matches in pattern order; match offsets index `" ".join(tokens) + " "`."""
        candidates = self._candidates(tokens)
        if not candidates:
            return
        line = " ".join(tokens) + " "
        for index in candidates:
            regex, payload = self._entries[index]
            for match in regex.finditer(line):
                yield match, payload

    def search(self, tokens: list[str]) -> bool:
        return next(self.matches(tokens), None) is not None


def normalise_patterns(patterns: Iterable[str]) -> list[str]:
    """Patterns as admins may write them (capitals, accents, apostrophes) in matching form."""
    return [fold_words(pattern).strip() for pattern in patterns]


def sentences(text: str) -> list[list[str]]:
    """Normalised sentences as token lists; commas stay as tokens so that they end a
    negation's scope."""
    folded = fold_words(text)
    result = []
    for part in _SENTENCE_BREAK.split(folded):
        tokens = _NON_WORD.sub(" ", part.replace(",", " , ")).split()
        if tokens:
            result.append(tokens)
    return result


def _limit(length: int) -> int:
    return 2 if length >= _LONG_WORD else 1


class SpellingCorrector:
    """Maps a misspelt word onto a lexicon word (edit distance with transpositions: 1, or 2
    for words of 9+ letters) so that "brethe" and "seziure" fire like "breathe" and "seizure". Words
    seen in ordinary non-clinical training messages are never corrected, so "cooking" does
    not become "choking"."""

    def __init__(self, vocabulary: Iterable[str], *, known: Iterable[str] = (),
                 prefixes: Iterable[str] = ()) -> None:
        """`prefixes`: stems of `word*` patterns; a token they match is already a lexicon
        word ("slurring" for `slurr*`) and is not "corrected" into another one."""
        self._vocabulary = frozenset(vocabulary)
        self._known = frozenset(known) | self._vocabulary
        self._prefixes = tuple(sorted(set(prefixes)))
        by_length: dict[int, list[str]] = {}
        for word in self._vocabulary:
            by_length.setdefault(len(word), []).append(word)
        # Candidates by (token length, letter): lexicon words close enough in length that
        # share the token's first or second letter (typos rarely change both).
        self._candidates: dict[tuple[int, str], list[str]] = {}
        for length in range(_MIN_FUZZY_LENGTH, max(by_length, default=0) + 3):
            limit = _limit(length)
            for word in (w for other in range(length - limit, length + limit + 1)
                         for w in by_length.get(other, ())):
                for letter in {word[0], word[1]}:
                    self._candidates.setdefault((length, letter), []).append(word)
        self._cache: dict[str, str] = {}

    def correct(self, token: str) -> str:
        if len(token) < _MIN_FUZZY_LENGTH or token in self._known or not token.isalpha():
            return token
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        if token.startswith(self._prefixes):
            self._cache[token] = token
            return token
        length = len(token)
        # Sorted, so that a tie between two equally close words is broken the same way in
        # every process (set order varies with the hash seed).
        candidates = sorted({*self._candidates.get((length, token[0]), ()),
                             *self._candidates.get((length, token[1]), ())})
        match = process.extractOne(token, candidates, scorer=OSA.distance,
                                   score_cutoff=_limit(length))
        best = match[0] if match else token
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[token] = best
        return best
