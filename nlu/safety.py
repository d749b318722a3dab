"""The safety screen: emergency, clinical or none, decided before anything else.

Two parts, and the higher level wins:
- the lexicon screen (config/safety.yml, English and Spanish patterns by category), with
  misspelling correction, negation ("no chest pain") and history ("had a stroke in 2019")
  handling in the clause the cue is in;
- a trained component (`nlu.embedded`) that scores the whole message, so paraphrases the
  lexicon does not list are still caught.

Built for recall: a negated or historical emergency cue lowers the level only to clinical,
never to none; a third party's emergency ("my dad is slurring his words") is never lowered by
negation; negation does not reach over a new subject ("no, I can't breathe").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nlu.base import SafetyLevel, SafetyResult
from nlu.lexicon import (
    PatternSet,
    SpellingCorrector,
    literal_words,
    prefix_stems,
    sentences,
)

NEGATION_REACH = 4  # words between a negation and the cue it negates
# A subject between a negation and a cue starts a new statement: "no, I can't breathe",
# "not me, my dad collapsed".
_SUBJECTS = frozenset({
    "i", "im", "ive", "id", "he", "hes", "she", "shes", "they", "theyre", "we", "were", "my",
    "his", "her", "our", "their", "it", "its",
    "yo", "el", "ella", "ellos", "ellas", "mi", "mis", "su", "sus", "nosotros"})


@dataclass(frozen=True, slots=True)
class _Cue:
    level: SafetyLevel
    category: str


@dataclass(frozen=True, slots=True)
class ModelScores:
    """The trained component's probabilities for one message."""

    emergency: float
    clinical: float


def _phrases(patterns: Iterable[str]) -> PatternSet[None]:
    return PatternSet((pattern, None) for pattern in patterns)


def _languages(section: Any) -> Iterable[str]:
    """Patterns of every language: messages mix languages and short ones are misdetected,
    so every message is screened with the whole lexicon."""
    if section is None:
        return []
    values = section.values() if isinstance(section, dict) else [section]
    return [pattern for value in values for pattern in value]


class LexiconScreen:
    def __init__(self, lexicon: Any, *, known_words: Iterable[str] = ()) -> None:
        """`lexicon` is the validated config/safety.yml (`nlu.config.SafetyLexicon`)."""
        # Emergency patterns first, so a sentence's emergency cue is judged before its
        # clinical ones.
        entries = [(pattern, _Cue(level, name))
                   for level, categories in ((SafetyLevel.EMERGENCY, lexicon.emergency),
                                             (SafetyLevel.CLINICAL, lexicon.clinical))
                   for name, category in categories.items()
                   for pattern in [*category.en, *category.es]]
        self._cues = PatternSet(entries)
        triggers = [t for rules in lexicon.negation.values() for t in rules.triggers]
        pseudo = [p for rules in lexicon.negation.values() for p in rules.pseudo]
        third_party = list(_languages(lexicon.third_party))
        historical = list(_languages(lexicon.historical))
        self._negation = _phrases(triggers)
        self._pseudo = _phrases(pseudo)
        self._third_party = _phrases(third_party)
        self._historical = _phrases(historical)
        self._terminators = frozenset(
            word for words in lexicon.terminators.values() for word in words)
        # Every word the lexicon names is a correction target, and is never itself
        # "corrected" into another ("years" must stay "years" for the history patterns).
        patterns = [pattern for pattern, _ in entries] + triggers + pseudo + third_party + \
            historical + list(self._terminators)
        vocabulary = {word for pattern in patterns for word in literal_words(pattern)}
        stems = {stem for pattern in patterns for stem in prefix_stems(pattern)}
        self._corrector = SpellingCorrector(vocabulary, known=known_words, prefixes=stems)

    def screen(self, text: str) -> SafetyResult:
        tokenised = [[self._corrector.correct(token) for token in tokens]
                     for tokens in sentences(text)]
        third_party = any(self._third_party.search(tokens) for tokens in tokenised)
        level = SafetyLevel.NONE
        cues: list[str] = []
        for tokens in tokenised:
            for match, cue in self._cues.matches(tokens):
                found, tag = self._judge(cue, tokens, match, third_party)
                if tag and tag not in cues:
                    cues.append(tag)
                level = level.at_least(found)
        if third_party and level is not SafetyLevel.NONE:
            cues.append("third_party")
        return SafetyResult(level, tuple(cues))

    def _judge(self, cue: _Cue, tokens: list[str], match: re.Match[str],
               third_party: bool) -> tuple[SafetyLevel, str]:
        start = match.string.count(" ", 0, match.start())
        end = start + match.group(0).count(" ")
        clause_start, clause_end = self._clause(tokens, start, end)
        historical = self._historical.search(tokens[clause_start:clause_end])
        negated = self._negated(tokens[clause_start:start])
        tag = f"{cue.level.value}:{cue.category}"
        if cue.level is SafetyLevel.EMERGENCY:
            if historical:
                return SafetyLevel.CLINICAL, f"historical:{cue.category}"
            if negated and not third_party:
                return SafetyLevel.CLINICAL, f"negated:{cue.category}"
            return SafetyLevel.EMERGENCY, tag
        if negated or historical:
            return SafetyLevel.NONE, ""
        return SafetyLevel.CLINICAL, tag

    def _clause(self, tokens: list[str], start: int, end: int) -> tuple[int, int]:
        """Token bounds of the clause around a cue: commas and terminators ("but") end it."""
        first = start
        while first > 0 and not self._breaks(tokens[first - 1]):
            first -= 1
        last = end
        while last < len(tokens) and not self._breaks(tokens[last]):
            last += 1
        return first, last

    def _breaks(self, token: str) -> bool:
        return token == "," or token in self._terminators

    def _negated(self, before: list[str]) -> bool:
        """A negation trigger shortly before the cue, with no new subject in between and not
        part of a pseudo-negation ("not sure", "no idea")."""
        if not before:
            return False
        pseudo = [match.span() for match, _ in self._pseudo.matches(before)]
        for match, _ in self._negation.matches(before):
            if any(s <= match.start() and match.end() <= e + 1 for s, e in pseudo):
                continue
            between = match.string[match.end():].split()
            if len(between) <= NEGATION_REACH and not _SUBJECTS.intersection(between):
                return True
        return False


def combine(lexicon: SafetyResult, scores: ModelScores | None, *, emergency_threshold: float,
            clinical_threshold: float) -> SafetyResult:
    """The lexicon's verdict raised by the trained component where it is confident enough.
    The thresholds are low on purpose (recall first)."""
    if scores is None:
        return lexicon
    level, cues = lexicon.level, list(lexicon.cues)
    if scores.emergency >= emergency_threshold and level is not SafetyLevel.EMERGENCY:
        level = SafetyLevel.EMERGENCY
        cues.append("model:emergency")
    elif (scores.emergency + scores.clinical >= clinical_threshold
          and level is SafetyLevel.NONE):
        level = SafetyLevel.CLINICAL
        cues.append("model:clinical")
    return SafetyResult(level, tuple(cues))
