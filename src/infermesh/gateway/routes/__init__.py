"""One routes module per API surface."""
