"""Engines a worker can run jobs on."""
