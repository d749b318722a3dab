"""Human queues: handoff tickets, structured notes, agent desks and escalation."""
