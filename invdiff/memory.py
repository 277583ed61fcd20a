"""This machine's physical memory, for the checks that refuse work which cannot fit (a huge
image in an edited file, a projector too large, samples that cannot be held) with one
sentence instead of an out-of-memory kill."""

from __future__ import annotations

import os


def physical_memory() -> int | None:
    """Physical memory in bytes (``SC_PAGE_SIZE * SC_PHYS_PAGES``), or None where the system
    does not say (then no memory check is made)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None
