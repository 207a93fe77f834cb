"""The sharded generation cache (`cache.layout=sharded`): several processes writing at once, each into its own shard
and reading all of them; torn, out-of-order and damaged lines; the same answers as the sqlite layout."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.config import CacheConfig, CacheLayout
from bench.models import cache_shards
from bench.models.base import Completion, GenerationRequest, SamplingParams
from bench.models.cache import GenerationCache, cache_key, open_generation_cache, shard_folder
from bench.models.cache_shards import ShardedGenerationCache, ShardFolderError, encode_line

REPO = Path(__file__).resolve().parents[2]


def _key(text: str) -> str:
    return cache_key("fake", "fake-1", GenerationRequest.chat("sys", text, SamplingParams()))


def _completion(text: str) -> Completion:
    return Completion((f"echo {text}", f"naïve\n{text}\t\"quoted\""), 3, 2)  # newline, tab, non-ASCII inside


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl"))


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from bench.models.base import Completion, GenerationRequest, SamplingParams
    from bench.models.cache import cache_key
    from bench.models.cache_shards import ShardedGenerationCache

    folder, me, writers, per_writer = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    key = lambda text: cache_key("fake", "fake-1", GenerationRequest.chat("sys", text, SamplingParams()))
    cache = ShardedGenerationCache(folder)
    for i in range(per_writer):  # one put per completion, as CachedChatModel stores them while they arrive
        cache.put_many([(key(f"{me}-{i}"), Completion((f"writer {me} item {i}",), 1, 1))])
        cache.get_many([key(f"{(me + 1) % writers}-{i}")])  # read the others while they write
    wanted = {key(f"{w}-{i}"): f"writer {w} item {i}" for w in range(writers) for i in range(per_writer)}
    deadline = time.time() + 60
    while True:
        found = cache.get_many(list(wanted))
        if len(found) == len(wanted) or time.time() > deadline:
            break
        time.sleep(0.05)
    wrong = [k for k, c in found.items() if c.text != wanted[k]]
    print(f"saw {len(found)} of {len(wanted)}, {len(wrong)} wrong")
""")


def test_processes_write_their_own_shards_and_read_each_others(tmp_path: Path) -> None:
    """Jobs on several nodes share the folder: none may need a lock, and each must see what the others stored."""
    folder, writers, per_writer = tmp_path / "generations.shards", 4, 40
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    children = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(me), str(writers), str(per_writer)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for me in range(writers)]
    outputs = [child.communicate(timeout=120) for child in children]
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err[-3000:]
        assert out.strip() == f"saw {writers * per_writer} of {writers * per_writer}, 0 wrong", (out, err[-2000:])
    shards = _shards(folder)
    assert len(shards) == writers, "each process writes one shard of its own"
    assert all(len(shard.read_bytes().splitlines()) == per_writer for shard in shards)
    assert len(ShardedGenerationCache(folder)) == writers * per_writer


def test_a_torn_last_line_is_ignored_until_it_is_whole(tmp_path: Path) -> None:
    """A writer killed mid-line (or one still writing) leaves a line without its newline: never a hit, never an
    error; once the rest arrives it counts."""
    folder = tmp_path / "shards"
    ShardedGenerationCache(folder).put_many([(_key("a"), _completion("a"))])
    line = encode_line(_key("b"), _completion("b"))
    other = folder / "otherhost-1-abc.jsonl"
    other.write_bytes(encode_line(_key("c"), _completion("c")) + line[:len(line) // 2])
    reader = ShardedGenerationCache(folder)
    found = reader.get_many([_key("a"), _key("b"), _key("c")])
    assert set(found) == {_key("a"), _key("c")} and found[_key("c")] == _completion("c")
    with other.open("ab") as stream:
        stream.write(line[len(line) // 2:])
    assert reader.get_many([_key("b")]) == {_key("b"): _completion("b")}
    assert len(reader) == 3


def test_bytes_that_arrive_out_of_order_are_skipped_until_filled_in(tmp_path: Path, caplog) -> None:
    """NFS may show a later page of a file before an earlier one: a run of NUL bytes inside a line. That line and
    the ones after it are not trusted until the gap is filled; the reader says so once."""
    folder = tmp_path / "shards"
    folder.mkdir()
    lines = [encode_line(_key(t), _completion(t)) for t in "abc"]
    gap = bytearray(lines[1])
    gap[20:40] = b"\0" * 20
    shard = folder / "otherhost-1-abc.jsonl"
    shard.write_bytes(lines[0] + bytes(gap) + lines[2])
    reader = ShardedGenerationCache(folder)
    with caplog.at_level(logging.WARNING, logger=cache_shards.__name__):
        assert set(reader.get_many([_key(t) for t in "abc"])) == {_key("a")}
        reader.get_many([_key("c")])
    assert len([r for r in caplog.records if "not (yet) a complete entry" in r.message]) == 1
    assert str(shard) in caplog.text
    with shard.open("r+b") as stream:
        stream.seek(len(lines[0]))
        stream.write(lines[1])
    assert set(reader.get_many([_key(t) for t in "abc"])) == {_key(t) for t in "abc"}


def test_lines_that_span_read_blocks_are_read_whole(tmp_path: Path, monkeypatch) -> None:
    """Shards are read in blocks: a line cut by a block boundary is joined, not taken for a torn one."""
    folder = tmp_path / "shards"
    ShardedGenerationCache(folder).put_many([(_key(str(i)), _completion(str(i))) for i in range(20)])
    (shard,) = _shards(folder)
    with shard.open("ab") as stream:
        stream.write(encode_line(_key("torn"), _completion("torn"))[:30])
    monkeypatch.setattr(cache_shards, "READ_BLOCK", 7)
    reader = ShardedGenerationCache(folder)
    keys = [_key(str(i)) for i in range(20)]
    assert reader.get_many([*keys, _key("torn")]) == {key: _completion(str(i)) for i, key in enumerate(keys)}


def test_a_line_whose_checksum_fails_is_not_trusted(tmp_path: Path) -> None:
    """A damaged value that is still valid JSON (a changed letter) must not be served as a completion."""
    folder = tmp_path / "shards"
    folder.mkdir()
    good = encode_line(_key("a"), _completion("a"))
    (folder / "h-1-x.jsonl").write_bytes(good.replace(b"echo a", b"echo b"))
    assert ShardedGenerationCache(folder).get_many([_key("a")]) == {}


def test_a_failed_write_leaves_its_shard_for_a_new_one(tmp_path: Path, monkeypatch) -> None:
    """A write that fails half-way (disk full, a dropped NFS server) leaves a torn line; appending behind it would
    glue the next entry to the tear and hide it, so the writer moves to a fresh shard."""
    folder = tmp_path / "shards"
    cache = ShardedGenerationCache(folder)
    cache.put_many([(_key("a"), _completion("a"))])
    real_write = os.write

    def half_then_fail(fd: int, data: bytes) -> int:
        real_write(fd, data[:len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_shards.os, "write", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        cache.put_many([(_key("b"), _completion("b"))])
    monkeypatch.setattr(cache_shards.os, "write", real_write)
    cache.put_many([(_key("c"), _completion("c"))])
    assert len(_shards(folder)) == 2
    found = ShardedGenerationCache(folder).get_many([_key(t) for t in "abc"])
    assert found == {_key("a"): _completion("a"), _key("c"): _completion("c")}


def test_answers_the_same_as_the_sqlite_layout(tmp_path: Path) -> None:
    """The same puts (overwrites included) and gets, in both layouts: the same completions, the same count."""
    shared = GenerationCache(tmp_path / "c.sqlite")
    sharded = ShardedGenerationCache(shard_folder(tmp_path / "c.sqlite"))
    fresh_reader = lambda: ShardedGenerationCache(shard_folder(tmp_path / "c.sqlite"))  # noqa: E731
    rng = random.Random(0)
    texts = [f"q{i}" for i in range(60)]
    for step in range(40):
        batch = rng.sample(texts, rng.randint(1, 6))
        items = [(_key(t), Completion((f"{t} v{step}",), step, 1)) for t in batch]
        shared.put_many(items)
        sharded.put_many(items)
        asked = [_key(t) for t in rng.sample(texts, 10)]
        assert sharded.get_many(asked) == shared.get_many(asked)
    everything = [_key(t) for t in texts]
    assert fresh_reader().get_many(everything) == shared.get_many(everything)
    assert len(fresh_reader()) == len(shared) == len(sharded)


def test_the_layout_comes_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "generations.sqlite"
    assert isinstance(open_generation_cache(CacheConfig(path=str(path))), GenerationCache)
    sharded = open_generation_cache(CacheConfig(path=str(path), layout=CacheLayout.sharded))
    assert isinstance(sharded, ShardedGenerationCache) and sharded.path == tmp_path / "generations.shards"
    assert len(sharded) == 0 and _shards(sharded.path) == [], "a process that only reads leaves no shard behind"
    (tmp_path / "taken.shards").write_text("a file where the folder goes")
    with pytest.raises(ShardFolderError, match="taken.shards is a file"):
        open_generation_cache(CacheConfig(path=str(tmp_path / "taken.sqlite"), layout=CacheLayout.sharded))


def test_a_forked_child_writes_a_shard_of_its_own(tmp_path: Path) -> None:
    """Data loaders and sandboxes fork: a child appending through its parent's descriptor would interleave lines."""
    folder = tmp_path / "shards"
    cache = ShardedGenerationCache(folder)
    cache.put_many([(_key("parent"), _completion("parent"))])
    pid = os.fork()
    if pid == 0:  # the child: write through a cache opened after the fork, then leave without pytest's cleanup
        try:
            ShardedGenerationCache(folder).put_many([(_key("child"), _completion("child"))])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert len(_shards(folder)) == 2
    assert set(ShardedGenerationCache(folder).get_many([_key("parent"), _key("child")])) == {_key("parent"),
                                                                                               _key("child")}
