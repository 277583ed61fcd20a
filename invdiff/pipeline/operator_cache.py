"""Reuse the last built operator across the files of a batch.

A batch pipeline reconstructs thousands of files with one geometry; building a Radon
operator's sparse Joseph matrix (or an MRI operator's coil maps) for each of them repeats the
same work. The last operator is kept, keyed by its full description: the JSON of its
parameters, with every array replaced by the SHA-256 of its bytes, dtype and shape, plus the
device and dtype. Operators are not modified after construction (wrappers such as
``scaled`` make new objects), so sharing one is safe. One entry only: memory stays that of a
single operator however many files pass.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import numpy as np
import torch

from invdiff.operators.base import Operator, build_operator, config_to_json

_lock = threading.Lock()
_last: tuple[str, Operator] | None = None


def operator_key(config: dict[str, Any], device, dtype: torch.dtype) -> str:
    """A string that is equal for two descriptions exactly when they build the same operator."""
    text, arrays = config_to_json(config)
    digests = {}
    for path, array in sorted(arrays.items()):
        a = np.ascontiguousarray(array)
        digests[path] = [str(a.dtype), list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()]
    return json.dumps([text, digests, str(torch.device(device)), str(dtype)], sort_keys=True)


def cached_operator(config: dict[str, Any], *, device, dtype: torch.dtype) -> Operator:
    """``build_operator(config)``, or the operator built last time for the same description."""
    global _last
    key = operator_key(config, device, dtype)
    with _lock:
        if _last is not None and _last[0] == key:
            return _last[1]
    op = build_operator(config, device=device, dtype=dtype)
    with _lock:
        _last = (key, op)
    return op


def clear() -> None:
    """Forget the cached operator (tests; freeing memory)."""
    global _last
    with _lock:
        _last = None
