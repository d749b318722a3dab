"""Slack for agents: ticket posts, buttons and threads (slack-bolt), escalation notices."""
