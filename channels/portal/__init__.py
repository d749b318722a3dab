"""The patient portal web chat: its HTTP routes and static page."""
