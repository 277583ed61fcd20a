"""invdiff evaluate (being written)."""
