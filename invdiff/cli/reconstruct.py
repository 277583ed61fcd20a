"""invdiff reconstruct (being written)."""
