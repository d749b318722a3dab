"""Email: SMTP listener or IMAP poller intake, MIME parsing, replies through the relay."""
