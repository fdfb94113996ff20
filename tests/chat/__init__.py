"""Tests of the chat service parts."""
