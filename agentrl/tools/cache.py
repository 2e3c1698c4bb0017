"""A per-group cache of stateless tool results.

All trajectories sampled for one task (a GRPO group, a Tree-GRPO tree) tend to make the same
first search. A stateless tool gives the same answer to the same call, so the env answers repeats
from a cache shared by the group, and counts the hits (`tools/cache_hits`). The cache lives as
long as the group: envs of a group share one `ToolCache` (forks share it automatically; the
rollout engine passes one per group in `reset(options={"tool_cache": cache})`).

The envs of a group step together, so their identical first calls arrive at the same moment,
before any result is stored. `claim` therefore also hands out the running call: the first env
runs it, the others wait for its result (`concurrent.futures.Future`, awaitable from any event
loop through `asyncio.wrap_future`) and count a hit.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future
from typing import Any, Hashable

from agentrl.tools.base import ToolResult


def call_key(tool_name: str, arguments: dict[str, Any]) -> Hashable:
    """A hashable key of a call: the tool name and its arguments as canonical JSON."""
    return tool_name, json.dumps(arguments, sort_keys=True, ensure_ascii=False, default=str)


class ToolCache:
    """Results of stateless tool calls by call key; thread-safe; counts hits and misses.

    Only successful results are stored: an error or an infrastructure failure is worth trying
    again.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._results: dict[Hashable, ToolResult] = {}
        self._running: dict[Hashable, Future] = {}
        self._lock = threading.Lock()

    def claim(self, key: Hashable) -> tuple[ToolResult | None, Future | None]:
        """What a caller about to run the call `key` should do:
        `(result, None)`: use this cached result (a hit);
        `(None, future)`: the same call is running for another env; await its result (a hit);
        `(None, None)`: run it, then call `finish(key, result)` (a miss)."""
        with self._lock:
            result = self._results.get(key)
            if result is not None:
                self.hits += 1
                return _as_cached(result), None
            running = self._running.get(key)
            if running is not None:
                self.hits += 1
                return None, running
            self.misses += 1
            self._running[key] = Future()
            return None, None

    def finish(self, key: Hashable, result: ToolResult) -> None:
        """The claimed call `key` ended with `result`: store it (if ok) and wake the waiters."""
        self.put(key, result)
        with self._lock:
            running = self._running.pop(key, None)
        if running is not None:
            running.set_result(_as_cached(result))

    def get(self, key: Hashable) -> ToolResult | None:
        with self._lock:
            result = self._results.get(key)
            if result is None:
                self.misses += 1
                return None
            self.hits += 1
        return _as_cached(result)

    def put(self, key: Hashable, result: ToolResult) -> None:
        if not result.ok:
            return
        with self._lock:
            if len(self._results) < self.max_entries:
                self._results[key] = result

    def __len__(self) -> int:
        return len(self._results)

    def __deepcopy__(self, memo: dict[int, Any]) -> "ToolCache":
        # Copies of an env belong to the same group: they share the cache.
        return self


def _as_cached(result: ToolResult) -> ToolResult:
    return ToolResult(text=result.text, status=result.status, data=dict(result.data), cached=True)
