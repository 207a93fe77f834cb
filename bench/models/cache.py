"""A persistent generation cache that wraps any ChatModel (caching as a wrapper, as lm-evaluation-harness does).

The key covers everything that changes the output — backend, model id (incl. revision/adapter), the full message
list and every sampling parameter including seed and n — so a hit can never return a completion produced under
different settings (a recurring bug report against peer harnesses). Re-running a finished evaluation makes zero
model calls.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from bench.models.base import ChatModel, Completion, GenerationRequest
from bench.models.embedded import cache_root


def default_cache_path() -> Path:
    return cache_root() / "generations.sqlite"


def cache_key(backend: str, model_id: str, request: GenerationRequest) -> str:
    payload = {"backend": backend, "model_id": model_id,
               "messages": [[m.role, m.content] for m in request.messages], "params": asdict(request.params)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class GenerationCache:
    """sqlite key -> completion JSON; WAL mode and one connection per thread so worker threads can share it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("CREATE TABLE IF NOT EXISTS completions "
                               "(key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)")

    def _connection(self) -> sqlite3.Connection:
        if getattr(self._local, "connection", None) is None:
            self._local.connection = sqlite3.connect(self.path, timeout=60)
        return self._local.connection

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        connection = self._connection()
        for start in range(0, len(keys), 500):  # stay under sqlite's bound-parameter limit
            chunk = list(keys[start:start + 500])
            rows = connection.execute(
                f"SELECT key, value FROM completions WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update((key, Completion.from_dict(json.loads(value))) for key, value in rows)
        return found

    def put_many(self, items: Sequence[tuple[str, Completion]]) -> None:
        now = time.time()
        with self._connection() as connection:
            connection.executemany("INSERT OR REPLACE INTO completions VALUES (?, ?, ?)",
                                   [(key, json.dumps(completion.to_dict()), now) for key, completion in items])

    def __len__(self) -> int:
        return self._connection().execute("SELECT COUNT(*) FROM completions").fetchone()[0]


class CachedChatModel:
    """Serves hits from the cache and sends only the misses, in one call, to the wrapped model."""

    def __init__(self, inner: ChatModel, cache: GenerationCache) -> None:
        self.inner = inner
        self.cache = cache

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def backend(self) -> str:
        return self.inner.backend

    def __getattr__(self, name: str):  # expose backend extras (tokenizer, model) to code that needs them
        return getattr(self.inner, name)

    def generate(self, requests: Sequence[GenerationRequest], progress: bool = True) -> list[Completion]:
        keys = [cache_key(self.backend, self.model_id, request) for request in requests]
        hits = self.cache.get_many(keys)
        misses = [index for index, key in enumerate(keys) if key not in hits]
        fresh = self.inner.generate([requests[i] for i in misses], progress=progress) if misses else []
        self.cache.put_many([(keys[i], completion) for i, completion in zip(misses, fresh)
                             if completion.finish_reason != "error"])
        results: list[Completion] = [replace(hits[key], cached=True) if key in hits else None  # type: ignore[misc]
                                     for key in keys]
        for index, completion in zip(misses, fresh):
            results[index] = completion
        return results
