"""A bounded cache: compiled programs and traced shapes kept by key, the oldest dropped first."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any


class BoundedCache(dict):
    """A dict of at most ``size`` entries; adding one more drops the oldest.

    Compiled programs are cached by model structure and shapes; a long session that meets
    many structures keeps only the most recent ones (and the models they close over).

    Args:
      size: the most entries kept, >= 1.

    Example:
      >>> cache = BoundedCache(2)
      >>> for k in "abc":
      ...     cache[k] = k.upper()
      >>> sorted(cache)
      ['b', 'c']
      >>> cache.get_or_make("d", lambda: 4), sorted(cache)
      (4, ['c', 'd'])
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: Hashable, value: Any) -> None:
        if key not in self:
            while len(self) >= self.size:
                del self[next(iter(self))]
        super().__setitem__(key, value)

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The entry under ``key``, made by ``make()`` and stored if missing."""
        if key not in self:
            self[key] = make()
        return self[key]
