"""The generation cache for network storage (`cache.layout=sharded`): one append-only JSONL shard per process.

sqlite cannot be shared by jobs on several nodes over NFS: its locks (fcntl) are only as good as the NFS lock
service, and WAL mode keeps its index in a memory-mapped -shm file that other hosts never see, so two nodes can
both "commit" and corrupt the database. This layout needs no lock and no shared memory at all:

* Each process writes only its own shard, `<folder>/<host>-<pid>[-<slurm job>]-<random>.jsonl`, created with
  O_EXCL and appended to by that process alone. A put is one write() of whole lines followed by fsync, so once it
  returns the lines are on the server; an interrupted write at worst leaves a torn last line, after which the
  writer starts a fresh shard rather than append behind the tear.
* Every process reads every shard. A line is `<key>\\t<crc32>\\t<completion JSON>\\n`; it counts only when it is
  complete (ends in a newline), its checksum matches and its JSON is a completion. A reader stops at the first line
  that does not count and resumes from there on its next look: a line still being written (or one whose pages
  reached the server out of order, a run of NUL bytes) is picked up once it is whole, and the torn last line of a
  killed writer is ignored for good. Shards are reopened on every look, which is what NFS's close-to-open
  consistency needs to show another client's appends.
* Lines are never rewritten and files never renamed or deleted while jobs run, so what a reader indexed stays
  valid: the index keeps only (shard, offset, length) and reads a value when it is asked for.

A miss looks for new shards and new lines before reporting a miss; a hit never touches the disk but to read its
value. When two processes generate the same request, both keep their line; either is a valid completion for the
key (the key covers every setting that changes the output).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.models.base import Completion

logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"
READ_BLOCK = 1 << 22  # bytes read at a time when indexing a shard
_KEY = re.compile(rb"^[0-9a-f]{64}$")


class ShardFolderError(RuntimeError):
    """The shard folder cannot be used (it is a file, or cannot be created)."""


def encode_line(key: str, completion: Completion) -> bytes:
    """One shard line. JSON with ensure_ascii has no raw newline or non-ASCII byte, so a line is one line."""
    payload = json.dumps(completion.to_dict(), ensure_ascii=True).encode("ascii")
    return b"%s\t%08x\t%s\n" % (key.encode("ascii"), zlib.crc32(payload), payload)


def decode_line(line: bytes) -> tuple[str, Completion] | None:
    """(key, completion) of a complete line (without its newline), or None when it does not count."""
    parts = line.split(b"\t", 2)
    if len(parts) != 3 or not _KEY.match(parts[0]) or len(parts[1]) != 8:
        return None
    key, crc, payload = parts
    try:
        if int(crc, 16) != zlib.crc32(payload):
            return None
        return key.decode("ascii"), Completion.from_dict(json.loads(payload))
    except (ValueError, TypeError, KeyError):
        return None


def shard_name() -> str:
    """Unique without any coordination: host and pid tell a person who wrote it, the random part guarantees it."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and (
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}")
    job = job or os.environ.get("SLURM_JOB_ID")
    parts = [host, str(os.getpid()), *([re.sub(r"[^0-9_]", "", job)] if job else []), uuid.uuid4().hex[:12]]
    return "-".join(parts) + SUFFIX


class ShardWriter:
    """This process's shard in one folder. Threads share it (a lock orders their writes); the file is created on
    the first put, so a process that only reads leaves nothing behind."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0

    def append(self, lines: Sequence[tuple[str, bytes]]) -> list[tuple[str, Path, int, int]]:
        """Append the lines durably; (key, shard, offset, length) of each, for the writer's own index."""
        data = b"".join(line for _, line in lines)
        with self._lock:
            if self._fd is None:
                self._open()
            assert self._fd is not None and self._path is not None
            start = self._size
            try:
                written = 0
                while written < len(data):
                    written += os.write(self._fd, data[written:])
                os.fsync(self._fd)
            except BaseException:
                self._abandon()  # a partial write leaves a torn line: never append behind it
                raise
            self._size += len(data)
            placed, offset = [], start
            for key, line in lines:
                placed.append((key, self._path, offset, len(line)))
                offset += len(line)
            return placed

    def _open(self) -> None:
        self._path = self.folder / shard_name()
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
        self._size = 0

    def _abandon(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd, self._path = None, None


_writers: dict[tuple[int, Path], ShardWriter] = {}
_writers_lock = threading.Lock()


def process_writer(folder: Path) -> ShardWriter:
    """One writer per process and folder, whatever number of caches (student, teacher) the process opens. Keyed
    by pid too, so a forked child never appends to its parent's shard."""
    with _writers_lock:
        key = (os.getpid(), folder)
        if key not in _writers:
            _writers[key] = ShardWriter(folder)
        return _writers[key]


@dataclass(frozen=True)
class _Location:
    shard: Path
    offset: int  # of the line
    length: int  # of the line, newline included


class ShardedGenerationCache:
    """key -> completion over every shard in `folder`; the same get_many/put_many/len as the sqlite cache."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder)
        if self.path.exists() and not self.path.is_dir():
            raise ShardFolderError(f"generation cache shards: {self.path} is a file, not a folder of shards; "
                                   "point cache.path elsewhere or move the file aside")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ShardFolderError(f"generation cache shards: cannot create {self.path} ({error})") from error
        self._writer = process_writer(self.path.resolve())
        self._lock = threading.Lock()
        self._index: dict[str, _Location] = {}
        self._read_up_to: dict[Path, int] = {}  # per shard: where the first line not yet counted starts
        self._warned: set[tuple[Path, int]] = set()

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        with self._lock:
            if any(key not in self._index for key in keys):
                self._refresh()
            wanted = [(key, self._index[key]) for key in dict.fromkeys(keys) if key in self._index]
        found: dict[str, Completion] = {}
        by_shard: dict[Path, list[tuple[str, _Location]]] = {}
        for key, location in wanted:
            by_shard.setdefault(location.shard, []).append((key, location))
        for shard, entries in by_shard.items():
            found.update(self._read_values(shard, entries))
        return found

    def put_many(self, items: Sequence[tuple[str, Completion]]) -> None:
        if not items:
            return
        placed = self._writer.append([(key, encode_line(key, completion)) for key, completion in items])
        with self._lock:
            for key, shard, offset, length in placed:
                self._index[key] = _Location(shard, offset, length)

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._index)

    # ------------------------------------------------------------------------------------------------ reading

    def _refresh(self) -> None:
        """Index the lines added to any shard since the last look (new shards included)."""
        try:
            shards = sorted(entry.path for entry in os.scandir(self.path)
                            if entry.name.endswith(SUFFIX) and not entry.name.startswith("."))
        except FileNotFoundError:
            return
        for name in shards:
            self._index_new_lines(Path(name))

    def _index_new_lines(self, shard: Path) -> None:
        """Index the complete lines after the last counted one, reading in blocks (a shard can be large)."""
        position = self._read_up_to.get(shard, 0)
        try:
            stream = open(shard, "rb")  # a fresh open: NFS shows another client's appends after one
        except FileNotFoundError:
            return
        with stream:
            size = os.fstat(stream.fileno()).st_size
            stream.seek(position)
            pending = b""
            while position + len(pending) < size:
                block = stream.read(READ_BLOCK)
                if not block:
                    break
                data, offset = pending + block, 0
                while (end := data.find(b"\n", offset)) >= 0:
                    decoded = decode_line(data[offset:end])
                    if decoded is None:
                        self._warn_unreadable(shard, position, trailing=position + end + 1 - offset < size)
                        self._read_up_to[shard] = position
                        return
                    self._index[decoded[0]] = _Location(shard, position, end + 1 - offset)
                    position += end + 1 - offset
                    offset = end + 1
                pending = data[offset:]  # a line not yet whole: still being written, or its writer died mid-line
        self._read_up_to[shard] = position

    def _warn_unreadable(self, shard: Path, at: int, trailing: bool) -> None:
        """A line that does not count, with more data after it: still arriving (NFS can show later bytes before
        earlier ones) or damaged. Either way its entries are skipped, not trusted; say so once."""
        if trailing and (shard, at) not in self._warned:
            self._warned.add((shard, at))
            logger.warning("generation cache shard %s: the line at byte %d is not (yet) a complete entry; it and "
                           "the lines after it are skipped until it is (they are regenerated if needed)", shard, at)

    def _read_values(self, shard: Path, entries: list[tuple[str, _Location]]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        try:
            fd = os.open(shard, os.O_RDONLY)
        except FileNotFoundError:
            return found
        try:
            for key, location in entries:
                line = os.pread(fd, location.length, location.offset)
                decoded = decode_line(line[:-1]) if line.endswith(b"\n") else None
                if decoded is not None and decoded[0] == key:
                    found[key] = decoded[1]
        finally:
            os.close(fd)
        return found
