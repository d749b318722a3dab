"""Care-navigation answers from the approved knowledge base (config/knowledge.yml).

An answer is chosen only when the question names the entry's keywords; otherwise the bot
hands off rather than guess. Answers are approved, non-clinical text.
"""

from __future__ import annotations

import re

from bot.config.knowledge import KnowledgeEntry, KnowledgeFile
from nlu.text import fold_words


def _phrase(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", fold_words(text)))


class KnowledgeBase:
    def __init__(self, knowledge: KnowledgeFile) -> None:
        self._entries = [(entry, [_phrase(k) for words in entry.keywords.values()
                                  for k in words if _phrase(k)])
                         for entry in knowledge.knowledge]

    def find(self, question: str) -> KnowledgeEntry | None:
        """The entry whose keywords cover most of the question (by matched characters)."""
        text = f" {_phrase(question)} "
        best: tuple[int, KnowledgeEntry] | None = None
        for entry, keywords in self._entries:
            score = sum(len(k) for k in keywords if f" {k} " in text)
            if score and (best is None or score > best[0]):
                best = (score, entry)
        return best[1] if best else None
