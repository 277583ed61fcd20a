"""invdiff sample (being written)."""
