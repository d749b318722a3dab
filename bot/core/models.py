"""The strict base of every config model: unknown keys are refused (a misplaced secret or a
typo cannot pass silently) and a loaded config cannot be changed."""

from pydantic import BaseModel, ConfigDict


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
