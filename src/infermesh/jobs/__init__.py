"""Asynchronous chat jobs: the durable queue they wait in, and their webhook events."""
