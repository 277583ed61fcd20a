"""invdiff likelihood (being written)."""
