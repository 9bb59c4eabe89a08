"""Caches of earlier prompts shared across requests, found by their tokens (a token trie).

A new prompt reuses the cache of the longest prefix it shares with an earlier one. Two ways fit:
- an entry whose tokens are a prefix of the prompt is used as it is (every cache kind);
- an entry that shares the first `d` tokens with the prompt and then goes on differently is rewound
  to those `d` tokens, where every layer can rewind that far (`can_trim_cache`: growing KV caches and
  latent caches can; sliding windows only a little; recurrent states never).
So caches that cannot rewind are only reusable at the exact points they were taken: the scheduler
snapshots them where each message of a chat ends and where a prompt's prefill ends.

Entries are bounded by bytes (`max_bytes`), least recently used first out. An entry that can rewind
to the start makes the entries on its own path redundant, and replaces them.
"""

from __future__ import annotations

import itertools

from mlxmodels.cache import cache_nbytes, can_trim_cache, copy_cache, trim_cache


class _Node:
    __slots__ = ("parent", "token", "children", "entry", "depth")

    def __init__(self, parent: "_Node | None", token: int | None, depth: int):
        self.parent, self.token, self.depth = parent, token, depth
        self.children: dict[int, _Node] = {}
        self.entry: _Entry | None = None


class _Entry:
    __slots__ = ("cache", "nbytes", "used")

    def __init__(self, cache: list, nbytes: int, used: int):
        self.cache, self.nbytes, self.used = cache, nbytes, used


class PrefixCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.root = _Node(None, None, 0)
        self.nbytes = 0
        self._holders: set[_Node] = set()  # the nodes with an entry
        self._clock = itertools.count()
        self.hits = self.misses = 0

    def lookup(self, tokens: list[int]) -> tuple[list | None, int]:
        """(a fresh copy of the cache holding tokens[:m], m) for the largest usable m, or (None, 0).
        The stored entry is left as it was."""
        node, path = self.root, []
        for token in tokens:
            child = node.children.get(token)
            if child is None:
                break
            node = child
            if node.entry is not None:
                path.append(node)
        best = None
        if node.depth > 0:
            best = self._nearest_below(node, lambda n: can_trim_cache(n.entry.cache, n.depth - node.depth))
        if best is None and path:
            best = path[-1]
        if best is None:
            self.misses += 1
            return None, 0
        self.hits += 1
        best.entry.used = next(self._clock)
        m = min(node.depth, best.depth)
        cache = copy_cache(best.entry.cache)
        trim_cache(cache, best.depth - m)
        return cache, m

    @staticmethod
    def _nearest_below(node: _Node, usable) -> _Node | None:
        """The node at or under `node` whose entry is `usable`, the shallowest (the least to rewind)."""
        level = [node]
        while level:
            for n in level:
                if n.entry is not None and usable(n):
                    return n
            level = [c for n in level for c in n.children.values()]
        return None

    def insert(self, tokens: list[int], cache: list) -> None:
        """Keep `cache` (which holds exactly `tokens`; the caller gives up the object) for later prompts."""
        nbytes = cache_nbytes(cache)
        if not tokens or nbytes > self.max_bytes:
            return
        node = self.root
        for token in tokens:
            node = node.children.get(token) or node.children.setdefault(token, _Node(node, token, node.depth + 1))
        if node.entry is not None:  # the same tokens again: the new cache replaces the old one
            self.nbytes -= node.entry.nbytes
        node.entry = _Entry(cache, nbytes, next(self._clock))
        self.nbytes += nbytes
        self._holders.add(node)
        # Entries on the path are prefixes of this one: redundant if it can rewind to them.
        ancestor = node.parent
        while ancestor is not None:
            if ancestor.entry is not None and can_trim_cache(cache, node.depth - ancestor.depth):
                self._drop(ancestor)
            ancestor = ancestor.parent
        self._evict()

    def _drop(self, node: _Node) -> None:
        self.nbytes -= node.entry.nbytes
        self._holders.discard(node)
        node.entry = None
        while node.parent is not None and node.entry is None and not node.children:
            del node.parent.children[node.token]
            node = node.parent

    def _evict(self) -> None:
        while self.nbytes > self.max_bytes:
            self._drop(min(self._holders, key=lambda n: n.entry.used))

    @property
    def entries(self) -> int:
        return len(self._holders)

    def clear(self) -> None:
        self.root = _Node(None, None, 0)
        self.nbytes = 0
        self._holders.clear()
