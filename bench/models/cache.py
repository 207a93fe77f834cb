"""A persistent generation cache that wraps any ChatModel (caching as a wrapper, as lm-evaluation-harness does).

The key covers everything that changes the output — backend, model id (incl. revision/adapter), the full message
list and every sampling parameter including seed and n — so a hit can never return a completion produced under
different settings (a recurring bug report against peer harnesses). Re-running a finished evaluation makes zero
model calls, and misses are sent and stored in chunks, so a run killed half-way keeps what it already generated.
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

from tqdm.auto import tqdm

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
    """Serves hits from the cache and sends the misses to the wrapped model in chunks of `flush_every`.

    Each chunk is stored as soon as it returns: a crash or kill loses at most one chunk. Misses are ordered by
    prompt length before chunking, so a batching backend still pads similar lengths together.
    """

    def __init__(self, inner: ChatModel, cache: GenerationCache, flush_every: int = 64) -> None:
        if flush_every < 1:
            raise ValueError(f"cache.flush_every must be >= 1, got {flush_every}")
        self.inner = inner
        self.cache = cache
        self.flush_every = flush_every

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
        results: list[Completion | None] = [replace(hits[key], cached=True) if key in hits else None
                                            for key in keys]
        misses = sorted((index for index, key in enumerate(keys) if key not in hits),
                        key=lambda i: -sum(len(m.content) for m in requests[i].messages))
        bar = tqdm(total=len(requests), initial=len(requests) - len(misses), unit="req",
                   desc=f"generate {self.model_id[:40]}", disable=not progress or not misses)
        for start in range(0, len(misses), self.flush_every):
            chunk = misses[start:start + self.flush_every]
            fresh = self.inner.generate([requests[i] for i in chunk], progress=False)
            self.cache.put_many([(keys[i], completion) for i, completion in zip(chunk, fresh)
                                 if completion.finish_reason != "error"])
            for index, completion in zip(chunk, fresh):
                results[index] = completion
            bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]  # every slot is a hit or a fresh completion
