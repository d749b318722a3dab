"""Patient channels: translate provider payloads to and from envelopes, verify, send."""
