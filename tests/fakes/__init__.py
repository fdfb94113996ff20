"""Test doubles for things outside infermesh; each speaks the real protocol."""
