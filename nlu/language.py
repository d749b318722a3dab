"""Which language a message is in (lingua: offline, built for short texts).

Short patient messages are hard ("ok", "necesito un refill"): another language is reported
only when the text is long enough, is not mostly words of the training data, and lingua is
confident about it (or the text is in a non-Latin script); otherwise the answer is English or
Spanish, whichever a detector limited to those two prefers, and the conversation's language
when the text is too short or the detector unsure.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from lingua import Language, LanguageDetectorBuilder

from nlu.text import fold

_SUPPORTED = {"en": Language.ENGLISH, "es": Language.SPANISH}
# Languages most often needed by patients in the US after English and Spanish (interpreter
# lane): what the detector may name instead of en/es.
_OTHERS = [
    Language.CHINESE, Language.VIETNAMESE, Language.TAGALOG, Language.ARABIC,
    Language.FRENCH, Language.KOREAN, Language.RUSSIAN, Language.PORTUGUESE,
    Language.GERMAN, Language.POLISH, Language.HINDI, Language.PERSIAN, Language.SOMALI,
    Language.JAPANESE, Language.ITALIAN, Language.UKRAINIAN, Language.URDU,
    Language.BENGALI, Language.PUNJABI, Language.SWAHILI,
]
_MIN_LETTERS = 3
_OTHER_MIN_LETTERS = 12  # shorter texts: only English or Spanish is decided
_OTHER_MIN_CONFIDENCE = 0.7
_FAMILIAR_SHARE = 0.6
_PAIR_SURE_LONG = 0.55
_PAIR_SURE_SHORT = 0.75  # "ok", "thx", "refill": keep the conversation's language
_WORDS = re.compile(r"[^\W\d_]+")
_SAMPLE_CHARS = 160  # enough to tell; detection time grows with length


def _code(language: Language) -> str:
    return language.iso_code_639_1.name.lower()


def _non_latin_share(text: str) -> float:
    letters = [char for char in text if char.isalpha()]
    if not letters:
        return 0.0
    latin = sum(1 for char in letters if "LATIN" in unicodedata.name(char, ""))
    return 1 - latin / len(letters)


class LanguageDetector:
    def __init__(self, supported: list[str], *, vocabulary: Iterable[str] = ()) -> None:
        """`vocabulary`: words of the (English and Spanish) training data, folded. A message
        made mostly of them is English or Spanish, and the costlier check for other languages
        is skipped."""
        self._supported = [code for code in supported if code in _SUPPORTED]
        self._vocabulary = frozenset(vocabulary)
        pair = [_SUPPORTED[code] for code in self._supported] or [Language.ENGLISH]
        # The pair's models are small and used for nearly every message: load them now.
        builder = LanguageDetectorBuilder.from_languages(
            *pair, *([Language.LATIN] if len(pair) == 1 else []))
        self._pair = builder.with_preloaded_language_models().build()
        # Loaded up front: lazily, the first foreign-looking message would wait about a
        # second while every model loads (and they all load on that first call anyway).
        self._all = LanguageDetectorBuilder.from_languages(
            *{*_SUPPORTED.values(), *_OTHERS}).with_preloaded_language_models().build()

    def _familiar(self, text: str) -> bool:
        words = _WORDS.findall(fold(text))
        if not self._vocabulary or not words:
            return False
        return sum(word in self._vocabulary for word in words) / len(words) >= _FAMILIAR_SHARE

    def detect(self, text: str, *, default: str = "en") -> str:
        text = text[:_SAMPLE_CHARS]
        letters = sum(1 for char in text if char.isalpha())
        if letters < _MIN_LETTERS:
            return default
        non_latin = _non_latin_share(text) > 0.5
        if non_latin or (letters >= _OTHER_MIN_LETTERS and not self._familiar(text)):
            best = self._all.compute_language_confidence_values(text)[0]
            code = _code(best.language)
            if code in self._supported or best.value >= _OTHER_MIN_CONFIDENCE or non_latin:
                return code
        if len(self._supported) < 2:
            return (self._supported or [default])[0]
        best = self._pair.compute_language_confidence_values(text)[0]
        sure = _PAIR_SURE_LONG if letters >= _OTHER_MIN_LETTERS else _PAIR_SURE_SHORT
        return _code(best.language) if best.value >= sure else default
