"""The mesh: which workers are connected, which one serves a request. No HTTP here."""
