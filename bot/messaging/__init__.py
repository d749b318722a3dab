"""Message infrastructure: intake from channels, the pipeline that runs a turn, workers that
drain the ingress queue, the outbox and delivery to channel adapters."""
