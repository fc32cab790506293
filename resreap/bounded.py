"""A map with a ceiling: what a long-running watch remembers per process,
socket or command line must not grow with what other users can create.

Past its ceiling the least recently used entry goes, one at a time (the
hand-written caps emptied the whole map at once: every holder's cached rule
and every spared verdict were read again in the same turn)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Iterator, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(Generic[K, V]):
    def __init__(self, most: int) -> None:
        self.most = most
        self._items: OrderedDict[K, V] = OrderedDict()
        self.evicted = 0  # entries pushed out by the ceiling, for the stop line and tests

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._items))

    def get(self, key: K, default: V | None = None) -> V | None:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return default

    def peek(self, key: K, default: V | None = None) -> V | None:
        """``get`` without refreshing the entry: for caches read per event,
        where a hit's bookkeeping cost more than a miss now and then (the
        ceiling then drops the oldest inserted first)."""
        return self._items.get(key, default)

    def __getitem__(self, key: K) -> V:
        self._items.move_to_end(key)
        return self._items[key]

    def __setitem__(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.most:
            self._items.popitem(last=False)
            self.evicted += 1

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._items.pop(key, default)

    def discard(self, key: K) -> None:
        self._items.pop(key, None)

    def items(self):
        return list(self._items.items())

    def clear(self) -> None:
        self._items.clear()

    def keep(self, wanted) -> int:
        """Drop every entry whose key ``wanted(key)`` refuses; how many went."""
        gone = [k for k in self._items if not wanted(k)]
        for k in gone:
            del self._items[k]
        return len(gone)
