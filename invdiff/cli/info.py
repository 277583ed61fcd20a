"""invdiff info (being written)."""
