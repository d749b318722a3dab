"""config/knowledge.yml: the approved answers the bot may give."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import Field

from bot.config.base import Identifier, LocalText
from bot.core.models import ConfigModel


class KnowledgeEntry(ConfigModel):
    """One approved care-navigation answer (where to go, hours, parking, ...). Never clinical."""

    id: Identifier
    owner: str = Field(min_length=1)
    approved: date
    keywords: dict[Literal["en", "es"], list[str]]
    answer: LocalText


class KnowledgeFile(ConfigModel):
    """config/knowledge.yml."""

    knowledge: list[KnowledgeEntry]
