"""The conversation engine: one patient turn in, one decision out (policy, identity, approved
scripts, answers, actions, scheduling, coverage, routing, handoff notes, escalation policy)."""
