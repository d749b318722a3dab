"""config/queues.yml: the human queues, their lanes, hours and escalation."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from bot.config.base import CallbackWindowText, LaneName
from bot.core.models import ConfigModel


class QueueConfig(ConfigModel):
    """A human queue (lane): who owns it, when it is staffed, what patients are promised.

    Owners are names staff recognise (a role or team); a missing owner is allowed at load so
    that `patientbot readiness` can name every gap at once.
    """

    display_name: str = Field(min_length=1)
    description: str = ""
    # What patients are told the team is called, per language (default: display_name).
    patient_name: dict[str, str] = {}
    owner: str | None = None
    backup_owner: str | None = None
    supervisor: str | None = None
    hours: str = "office"  # a schedule in coverage.yml
    after_hours: Literal["next_business_day", "on_call"] = "next_business_day"
    on_call_owner: str | None = None  # who takes this lane after hours (on_call mode)
    ack_sla_minutes: int = Field(60, ge=1, le=7 * 24 * 60)
    callback_window: CallbackWindowText = "1 business day"
    on_call_callback_window: CallbackWindowText = "2 hours"

    def name_for_patients(self, language: str) -> str:
        return self.patient_name.get(language) or self.display_name


class EscalationConfig(ConfigModel):
    """queues.yml `escalation:` (optional): how unclaimed handoffs and promised callbacks
    escalate (handoff/escalation.py).

    An unclaimed ticket is re-notified after its lane's ack_sla_minutes, goes to the backup
    owner after another SLA period, then to the supervisor. Emergency tickets use
    min(lane SLA, emergency_ack_minutes). The owner is warned when `callback_alert_share` of
    the time to the promised callback has passed, or `callback_alert_lead_minutes` before it
    is due if that is earlier. With `staffed_hours_only`, a step that falls due while a
    next_business_day lane is closed fires when the lane opens (on-call lanes and emergencies
    escalate at any hour).
    """

    emergency_ack_minutes: int = Field(5, ge=1, le=24 * 60)
    callback_alert_share: float = Field(0.8, gt=0, lt=1)
    callback_alert_lead_minutes: int | None = Field(None, ge=1, le=7 * 24 * 60)
    staffed_hours_only: bool = True
    # How long a sweeper holds a due timer while it fires it; one that dies mid-way loses it
    # to another sweeper after this.
    timer_lease_seconds: float = Field(60.0, gt=0, le=3600)


class QueuesFile(ConfigModel):
    queues: dict[LaneName, QueueConfig]
    escalation: EscalationConfig = EscalationConfig()
