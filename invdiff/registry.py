"""Name -> object registries filled from entry points.

Built-in operators and solvers register exactly as a third-party package does: through the
entry-point groups ``invdiff.operators`` and ``invdiff.solvers`` declared in pyproject.toml.
The command line lists exactly what a registry holds.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from invdiff.errors import InputError


class Registry:
    """Lazily loaded mapping from a name to the object an entry point names.

    Objects may also be added in-process with :meth:`register` (used by tests and by
    libraries that do not want to ship entry points).
    """

    def __init__(self, group: str, kind: str):
        self.group = group
        self.kind = kind
        self._extra: dict[str, Any] = {}
        self._loaded: dict[str, Any] = {}

    def _entry_points(self) -> dict:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(set(self._entry_points()) | set(self._extra))

    def register(self, name: str, obj: Any) -> Any:
        self._extra[name] = obj
        return obj

    def get(self, name: str) -> Any:
        """The object registered as ``name``; InputError listing the choices if unknown."""
        if name in self._extra:
            return self._extra[name]
        if name in self._loaded:
            return self._loaded[name]
        eps = self._entry_points()
        if name not in eps:
            choices = ", ".join(self.names()) or "none"
            raise InputError(f"Unknown {self.kind} '{name}'; available: {choices}.")
        obj = eps[name].load()
        self._loaded[name] = obj
        return obj
