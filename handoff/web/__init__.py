"""The web desk for agents: sign-in, queue and ticket pages, and its static assets."""
