"""A persistent generation cache that wraps any ChatModel (caching as a wrapper, as lm-evaluation-harness does).

The key covers everything that changes the output — backend, model id (incl. revision/adapter), the full message
list and every sampling parameter including seed and n — so a hit can never return a completion produced under
different settings (a recurring bug report against peer harnesses). Re-running a finished evaluation makes zero
model calls, and misses are sent and stored in chunks, so a run killed half-way keeps what it already generated.
Replies that arrived in a chunk that then failed or was interrupted are stored too: the backend hands them over on
its PartialGenerationError / GenerationInterrupted, and they were paid for.

Two storage layouts (`cache.layout`), the same keys and values: `shared`, one sqlite file (GenerationCache, below),
for one machine; `sharded`, append-only JSONL shards, one per process (bench/models/cache_shards.py), for jobs on
several nodes sharing a cache on network storage, where sqlite's locks and WAL are not safe.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bench.models.base import ChatModel, Completion, GenerationRequest, carried_completions, with_completions
from bench.models.embedded import cache_root
from bench.models.progress import GenerationProgress

if TYPE_CHECKING:
    from bench.config import CacheConfig


def default_cache_path() -> Path:
    return cache_root() / "generations.sqlite"


def shard_folder(path: Path) -> Path:
    """Where `cache.layout=sharded` keeps its shards for `cache.path`: beside it, generations.sqlite ->
    generations.shards/, so one cache.path serves both layouts (they do not read each other's entries)."""
    return Path(path).with_suffix(".shards")


class GenerationStore(Protocol):
    """What CachedChatModel needs of a storage layout."""

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]: ...

    def put_many(self, items: Sequence[tuple[str, Completion]]) -> None: ...

    def __len__(self) -> int: ...


def open_generation_cache(config: CacheConfig) -> GenerationStore:
    """The cache `config` describes: its layout at its path (default: the user's cache dir)."""
    from bench.config import CacheLayout
    from bench.models.cache_shards import ShardedGenerationCache

    path = Path(config.path) if config.path else default_cache_path()
    if config.layout == CacheLayout.sharded:
        return ShardedGenerationCache(shard_folder(path))
    return GenerationCache(path)


def cache_key(backend: str, model_id: str, request: GenerationRequest) -> str:
    payload = {"backend": backend, "model_id": model_id,
               "messages": [[m.role, m.content] for m in request.messages], "params": asdict(request.params)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class CorruptCacheError(RuntimeError):
    """The cache file is not a readable sqlite database, or holds a value that is not a stored completion."""


class GenerationCache:
    """sqlite key -> completion JSON; WAL mode and one connection per thread so worker threads can share it.

    The `shared` layout: safe for any number of processes on one machine, not for several machines on network
    storage (WAL's shared memory is per host): there, `cache.layout=sharded`.

    A damaged file (a disk filled mid-write, garbage bytes, a different sqlite file at cache.path) raises
    CorruptCacheError naming the file and the way out, rather than sqlite's bare 'file is not a database'."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._readable(), self._connection() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("CREATE TABLE IF NOT EXISTS completions "
                               "(key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)")

    def _corrupt(self, problem: str) -> CorruptCacheError:
        return CorruptCacheError(
            f"generation cache {self.path}: {problem}. Move it aside (mv {self.path} {self.path}.corrupt, and its "
            f"-wal/-shm files if present) to start an empty cache, or point cache.path at another file; "
            "only cached completions are lost, they are regenerated on the next run")

    @contextmanager
    def _readable(self) -> Iterator[None]:
        """sqlite's corruption errors (exactly sqlite3.DatabaseError: 'file is not a database', 'malformed'),
        as CorruptCacheError; a locked or unwritable file (OperationalError) is not corruption and passes as is."""
        try:
            yield
        except sqlite3.DatabaseError as error:
            if type(error) is not sqlite3.DatabaseError:
                raise
            raise self._corrupt(f"not a readable sqlite database ({error})") from error

    def _decode(self, key: str, value: str) -> Completion:
        try:
            return Completion.from_dict(json.loads(value))
        except (ValueError, TypeError, KeyError) as error:
            raise self._corrupt(f"the value stored under key {key} is not a completion "
                                f"({type(error).__name__}: {error})") from error

    def _connection(self) -> sqlite3.Connection:
        if getattr(self._local, "connection", None) is None:
            self._local.connection = sqlite3.connect(self.path, timeout=60)
        return self._local.connection

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        connection = self._connection()
        for start in range(0, len(keys), 500):  # stay under sqlite's bound-parameter limit
            chunk = list(keys[start:start + 500])
            with self._readable():
                rows = connection.execute(
                    f"SELECT key, value FROM completions WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk).fetchall()
            found.update((key, self._decode(key, value)) for key, value in rows)
        return found

    def put_many(self, items: Sequence[tuple[str, Completion]]) -> None:
        now = time.time()
        with self._readable(), self._connection() as connection:
            connection.executemany("INSERT OR REPLACE INTO completions VALUES (?, ?, ?)",
                                   [(key, json.dumps(completion.to_dict()), now) for key, completion in items])

    def __len__(self) -> int:
        with self._readable():
            return self._connection().execute("SELECT COUNT(*) FROM completions").fetchone()[0]


class CachedChatModel:
    """Serves hits from the cache and sends the misses to the wrapped model in chunks of `flush_every`.

    Each chunk is stored as soon as it returns, and a chunk that fails or is interrupted still has its arrived
    replies stored: an error or Ctrl-C loses no paid reply, a hard kill at most the unfinished chunk. Misses are
    ordered by prompt length before chunking, so a batching backend still pads similar lengths together.
    """

    def __init__(self, inner: ChatModel, cache: GenerationStore, flush_every: int = 64) -> None:
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

    def stop_server(self) -> None:
        """Stop the managed server behind the wrapped model, if it has one (bench/models/served.py)."""
        stop = getattr(self.inner, "stop_server", None)
        if stop is not None:
            stop()

    def generate(self, requests: Sequence[GenerationRequest],
                 progress: bool | GenerationProgress = True) -> list[Completion]:
        """Hits from the cache, misses from the wrapped model, in request order.

        When a chunk fails or is interrupted, the replies that did arrive in it are stored before the error goes on,
        and the error carries (PartialGenerationError / GenerationInterrupted `completions`, in *this* call's
        request order) every completion the call holds: hits, earlier chunks and those arrivals, so the caller's
        usage meter can count what was paid. An error is passed on untouched when nothing new had arrived."""
        keys = [cache_key(self.backend, self.model_id, request) for request in requests]
        hits = self.cache.get_many(keys)
        results: list[Completion | None] = [replace(hits[key], cached=True) if key in hits else None
                                            for key in keys]
        misses = sorted((index for index, key in enumerate(keys) if key not in hits),
                        key=lambda i: -sum(len(m.content) for m in requests[i].messages))
        bar = GenerationProgress(len(requests), f"generate {self.model_id[:40]}", done=len(requests) - len(misses),
                                 enabled=bool(progress) and bool(misses))
        try:
            for start in range(0, len(misses), self.flush_every):
                chunk = misses[start:start + self.flush_every]
                stored: set[int] = set()  # request indexes stored on arrival, not to be written again
                bar.on_completed = self._store_as_it_arrives(keys, chunk, stored)
                try:
                    fresh: Sequence[Completion | None] = self.inner.generate([requests[i] for i in chunk],
                                                                             progress=bar)
                except BaseException as error:
                    carrier = self._carrier(error, keys, chunk, results, stored)
                    if carrier is error:
                        raise
                    raise carrier from error
                self._keep(keys, chunk, fresh, results, stored)
        finally:
            bar.close()
        return results  # type: ignore[return-value]  # every slot is a hit or a fresh completion

    def _store_as_it_arrives(self, keys: Sequence[str], chunk: Sequence[int], stored: set[int]):
        """Store each completion the moment the backend has it (index = position in `chunk`): a kill -9 in the
        middle of a chunk then loses nothing a server already answered, so a resumed run never asks again. The
        request indexes stored go into `stored`."""
        def store(index: int, completion: Completion) -> None:
            if completion.finish_reason != "error":
                self.cache.put_many([(keys[chunk[index]], completion)])
                stored.add(chunk[index])
        return store

    def _carrier(self, error: BaseException, keys: Sequence[str], chunk: Sequence[int],
                 results: list[Completion | None], stored: set[int]) -> BaseException:
        """Store the replies `error` carries for `chunk`; return what to raise: `error` itself when nothing new
        (paid) had arrived in this call, else an error carrying every completion the call holds."""
        self._keep(keys, chunk, carried_completions(error), results, stored)
        if not any(completion is not None and not completion.cached for completion in results):
            return error
        return with_completions(error, results)

    def _keep(self, keys: Sequence[str], chunk: Sequence[int], fresh: Sequence[Completion | None],
              results: list[Completion | None], stored: set[int]) -> None:
        """Store a chunk's arrived completions not `stored` on arrival already (None: failed or not sent; errors
        are never stored) and slot them into `results` at their request indexes."""
        arrived = [(index, completion) for index, completion in zip(chunk, fresh) if completion is not None]
        self.cache.put_many([(keys[index], completion) for index, completion in arrived
                             if completion.finish_reason != "error" and index not in stored])
        for index, completion in arrived:
            results[index] = completion
