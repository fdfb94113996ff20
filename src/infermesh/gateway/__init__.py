"""The gateway: the public, OpenAI-compatible HTTP API."""
