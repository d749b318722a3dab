"""Which language a message is in (lingua: offline, built for short texts).

Short patient messages are hard ("ok", "necesito un refill"), so the decision is in two steps:
another language is reported only when lingua is confident about it (or the text is in a
non-Latin script); otherwise the answer is English or Spanish, whichever a detector limited to
those two prefers, and the conversation's language when the text has too few letters to tell.
"""

from __future__ import annotations

import unicodedata

from lingua import Language, LanguageDetectorBuilder

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
_OTHER_MIN_LETTERS = 20
_OTHER_MIN_CONFIDENCE = 0.8


def _code(language: Language) -> str:
    return language.iso_code_639_1.name.lower()


def _non_latin_share(text: str) -> float:
    letters = [char for char in text if char.isalpha()]
    if not letters:
        return 0.0
    latin = sum(1 for char in letters if "LATIN" in unicodedata.name(char, ""))
    return 1 - latin / len(letters)


class LanguageDetector:
    def __init__(self, supported: list[str]) -> None:
        self._supported = [code for code in supported if code in _SUPPORTED]
        pair = [_SUPPORTED[code] for code in self._supported] or [Language.ENGLISH]
        self._pair = LanguageDetectorBuilder.from_languages(*pair, Language.LATIN) \
            .build() if len(pair) == 1 else LanguageDetectorBuilder.from_languages(*pair) \
            .build()
        self._all = LanguageDetectorBuilder.from_languages(
            *{*_SUPPORTED.values(), *_OTHERS}).build()

    def detect(self, text: str, *, default: str = "en") -> str:
        letters = sum(1 for char in text if char.isalpha())
        if letters < _MIN_LETTERS:
            return default
        if _non_latin_share(text) > 0.5 or letters >= _OTHER_MIN_LETTERS:
            best = self._all.compute_language_confidence_values(text)[0]
            code = _code(best.language)
            if code not in self._supported and (
                    best.value >= _OTHER_MIN_CONFIDENCE or _non_latin_share(text) > 0.5):
                return code
        if len(self._supported) < 2:
            return self._supported[0] if self._supported else default
        best = self._pair.compute_language_confidence_values(text)[0]
        return _code(best.language) if best.value >= 0.55 or letters >= 12 else default
