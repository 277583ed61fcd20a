"""invdiff train (being written)."""
