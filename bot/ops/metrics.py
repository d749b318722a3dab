"""Prometheus metrics (prometheus-client). Labels are channel, lane and decision codes only."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_IN = Counter("patientbot_messages_in_total", "Inbound messages accepted", ["channel"])
MESSAGES_REJECTED = Counter("patientbot_messages_rejected_total",
                            "Inbound requests refused by a channel (nothing queued)",
                            ["channel", "reason"])
REPLIES_SUPPRESSED = Counter("patientbot_replies_suppressed_total",
                             "Replies not sent because of the per-conversation reply cap",
                             ["channel"])
MESSAGES_OUT = Counter("patientbot_messages_out_total", "Replies delivered", ["channel"])
SEND_FAILURES = Counter("patientbot_send_failures_total", "Failed reply sends", ["channel"])
SMS_STATUS = Counter("patientbot_sms_status_total", "Twilio delivery receipts", ["status"])
HANDOFFS = Counter("patientbot_handoffs_total", "Handoffs to human queues", ["lane", "priority"])
DECISIONS = Counter("patientbot_decisions_total", "Pipeline decisions", ["decision"])
PIPELINE_ERRORS = Counter("patientbot_pipeline_errors_total",
                          "Errors caught by the pipeline's error boundary", ["stage"])
DUPLICATES = Counter("patientbot_duplicates_total", "Redelivered or repeated messages dropped")
PIPELINE_LATENCY = Histogram(
    "patientbot_pipeline_latency_seconds",
    "From receipt by the channel to the reply committed in the outbox",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INGRESS_PENDING = Gauge("patientbot_ingress_pending", "Ingress entries delivered, not yet done")
INGRESS_DEAD = Gauge("patientbot_ingress_dead_letters",
                     "Entries set aside for an operator (alert when above zero)")
NLU_VERDICTS = Counter("patientbot_nlu_verdicts_total",
                       "Inbound messages read by the NLU, by safety level and lane",
                       ["safety", "lane"])


def show_channel(channel: str) -> None:
    """Create a channel's series at zero, so /metrics lists every enabled channel (and an
    alert on "no messages in" can fire) before its first message."""
    for counter in (MESSAGES_IN, MESSAGES_OUT, SEND_FAILURES):
        counter.labels(channel=channel)
