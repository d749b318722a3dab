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
from nlu.lexicon import SpellingCorrector, compile_any, literal_words, sentences

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
    regex: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class ModelScores:
    """The trained component's probabilities for one message."""

    emergency: float
    clinical: float


def _languages(section: Any) -> Iterable[str]:
    """Patterns of every language: messages mix languages and short ones are misdetected,
    so every message is screened with the whole lexicon."""
    if section is None:
        return []
    values = section.values() if isinstance(section, dict) else [section]
    return [pattern for value in values for pattern in value]


class LexiconScreen:
    def __init__(self, lexicon: Any, *, known_words: Iterable[str] = ()) -> None:
        """`lexicon` is the validated config/safety.yml (`bot.config.SafetyLexicon`)."""
        self._cues: list[_Cue] = []
        vocabulary: set[str] = set()
        for level, categories in ((SafetyLevel.EMERGENCY, lexicon.emergency),
                                  (SafetyLevel.CLINICAL, lexicon.clinical)):
            for name, category in categories.items():
                patterns = [*category.en, *category.es]
                regex = compile_any(patterns)
                if regex is not None:
                    self._cues.append(_Cue(level, name, regex))
                for pattern in patterns:
                    vocabulary |= literal_words(pattern)
        self._negation = compile_any(
            t for rules in lexicon.negation.values() for t in rules.triggers)
        self._pseudo = compile_any(
            p for rules in lexicon.negation.values() for p in rules.pseudo)
        self._terminators = frozenset(
            word for words in lexicon.terminators.values() for word in words)
        self._third_party = compile_any(_languages(lexicon.third_party))
        self._historical = compile_any(_languages(lexicon.historical))
        self._corrector = SpellingCorrector(vocabulary, known=known_words)

    def screen(self, text: str) -> SafetyResult:
        tokenised = [[self._corrector.correct(token) for token in tokens]
                     for tokens in sentences(text)]
        third_party = self._third_party is not None and any(
            self._third_party.search(" ".join(tokens) + " ") for tokens in tokenised)
        level = SafetyLevel.NONE
        cues: list[str] = []
        for tokens in tokenised:
            line = " ".join(tokens) + " "
            for cue in self._cues:
                for match in cue.regex.finditer(line):
                    found, tag = self._judge(cue, tokens, line, match, third_party)
                    if tag and tag not in cues:
                        cues.append(tag)
                    level = level.at_least(found)
                    if found is cue.level:
                        break
        if third_party and level is not SafetyLevel.NONE:
            cues.append("third_party")
        return SafetyResult(level, tuple(cues))

    def _judge(self, cue: _Cue, tokens: list[str], line: str, match: re.Match[str],
               third_party: bool) -> tuple[SafetyLevel, str]:
        start = line.count(" ", 0, match.start())
        end = start + match.group(0).count(" ")
        clause_start, clause_end = self._clause(tokens, start, end)
        historical = self._historical is not None and bool(
            self._historical.search(" ".join(tokens[clause_start:clause_end]) + " "))
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
        if self._negation is None or not before:
            return False
        window = " ".join(before) + " "
        pseudo = [m.span() for m in self._pseudo.finditer(window)] if self._pseudo else []
        for match in self._negation.finditer(window):
            if any(s <= match.start() and match.end() <= e + 1 for s, e in pseudo):
                continue
            between = window[match.end():].split()
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
