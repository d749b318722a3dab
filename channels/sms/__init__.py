"""SMS through Twilio: webhook intake and outbound sends."""
