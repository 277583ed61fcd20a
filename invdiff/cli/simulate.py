"""invdiff simulate (being written)."""
