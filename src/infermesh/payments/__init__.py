"""Payments: USDC top-ups on Base, read from the chain through one small interface."""
