"""Billing: prices, the credit ledger, holds and settlement, usage records, earnings.

Every amount is an integer number of micro-USD (USDC has 6 decimals, so a deposit maps
1:1); a display "credit" is a presentation unit only.
"""
