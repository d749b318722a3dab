"""Outbound contact the practice starts: appointment reminders and post-discharge follow-up
programs. Empty until the outreach issue lands; new code goes here, above messaging."""
