"""The generation cache: keys, order, persistence, threads, in both storage layouts (sqlite `shared`, JSONL
`sharded`); the sharded layout's safety with several writers and torn lines is tested in test_cache_shards.py."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

import pytest

from bench.models.base import (Completion, GenerationInterrupted, GenerationRequest, Message,
                               PartialGenerationError, SamplingParams)
from bench.models.cache import CachedChatModel, CorruptCacheError, GenerationCache, cache_key, shard_folder
from bench.models.cache_shards import ShardedGenerationCache


class CountingModel:
    backend = "fake"

    def __init__(self, model_id: str = "fake-1") -> None:
        self.model_id = model_id
        self.calls: list[list[str]] = []

    def generate(self, requests: Sequence[GenerationRequest], progress: bool = True) -> list[Completion]:
        self.calls.append([r.messages[-1].content for r in requests])
        return [Completion((f"echo {r.messages[-1].content}",), 3, 2) for r in requests]


def _request(text: str, **params) -> GenerationRequest:
    return GenerationRequest.chat("sys", text, SamplingParams(**params))


@pytest.fixture(params=["shared", "sharded"])
def open_cache(request):
    """A cache at a path in either layout: every behaviour of CachedChatModel must hold for both."""
    if request.param == "shared":
        return GenerationCache
    return lambda path: ShardedGenerationCache(shard_folder(path))


def test_miss_then_hit(tmp_path, open_cache) -> None:
    inner = CountingModel()
    model = CachedChatModel(inner, open_cache(tmp_path / "c.sqlite"))
    first = model.generate([_request("a")])
    second = model.generate([_request("a")])
    assert len(inner.calls) == 1
    assert first[0].text == second[0].text and not first[0].cached and second[0].cached


def test_only_misses_reach_the_model_and_order_is_kept(tmp_path, open_cache) -> None:
    inner = CountingModel()
    model = CachedChatModel(inner, open_cache(tmp_path / "c.sqlite"))
    model.generate([_request("b"), _request("d")])
    results = model.generate([_request(x) for x in "abcde"])
    assert inner.calls[-1] == ["a", "c", "e"]
    assert [r.text for r in results] == [f"echo {x}" for x in "abcde"]
    assert [r.cached for r in results] == [False, True, False, True, False]


@pytest.mark.parametrize("change", [
    dict(temperature=0.5), dict(seed=1), dict(max_new_tokens=99), dict(stop=("x",)), dict(top_p=0.5),
    dict(temperature=1.0, n=2),
])
def test_every_sampling_parameter_is_in_the_key(change) -> None:
    assert cache_key("hf", "m", _request("q")) != cache_key("hf", "m", _request("q", **change))


def test_messages_model_and_backend_are_in_the_key() -> None:
    base = cache_key("hf", "m", _request("q"))
    assert base != cache_key("hf", "m", _request("q2"))
    assert base != cache_key("hf", "m2", _request("q"))
    assert base != cache_key("openai", "m", _request("q"))
    other_system = GenerationRequest((Message("system", "other"), Message("user", "q")), SamplingParams())
    assert base != cache_key("hf", "m", other_system)
    assert base == cache_key("hf", "m", _request("q"))


def test_persists_across_instances(tmp_path, open_cache) -> None:
    CachedChatModel(CountingModel(), open_cache(tmp_path / "c.sqlite")).generate([_request("a")])
    inner = CountingModel()
    CachedChatModel(inner, open_cache(tmp_path / "c.sqlite")).generate([_request("a")])
    assert inner.calls == []


def test_errors_are_not_cached(tmp_path, open_cache) -> None:
    class Failing(CountingModel):
        def generate(self, requests, progress=True):
            self.calls.append([])
            return [Completion(("",), finish_reason="error") for _ in requests]

    inner = Failing()
    model = CachedChatModel(inner, open_cache(tmp_path / "c.sqlite"))
    model.generate([_request("a")])
    model.generate([_request("a")])
    assert len(inner.calls) == 2


def test_threads_share_one_cache(tmp_path, open_cache) -> None:
    cache = open_cache(tmp_path / "c.sqlite")
    model = CachedChatModel(CountingModel(), cache)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(20):
                model.generate([_request(f"{offset}-{i}"), _request("shared")])
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(cache) == 81


def test_misses_are_stored_chunk_by_chunk_so_a_killed_run_keeps_its_work(tmp_path, open_cache) -> None:
    class DiesOnThirdCall(CountingModel):
        def generate(self, requests, progress=True):
            if len(self.calls) == 2:
                raise KeyboardInterrupt  # the user kills the run half-way
            return super().generate(requests, progress)

    path = tmp_path / "c.sqlite"
    with pytest.raises(KeyboardInterrupt):
        CachedChatModel(DiesOnThirdCall(), open_cache(path), flush_every=2).generate(
            [_request(x) for x in "abcdef"], progress=False)
    assert len(open_cache(path)) == 4
    inner = CountingModel()
    results = CachedChatModel(inner, open_cache(path), flush_every=2).generate(
        [_request(x) for x in "abcdef"], progress=False)
    assert inner.calls == [["e", "f"]]
    assert [r.text for r in results] == [f"echo {x}" for x in "abcdef"]


def test_chunks_group_similar_prompt_lengths(tmp_path, open_cache) -> None:
    inner = CountingModel()
    CachedChatModel(inner, open_cache(tmp_path / "c.sqlite"), flush_every=2).generate(
        [_request(x) for x in ("a", "bbbbbb", "cc", "dddddddd")], progress=False)
    assert inner.calls == [["dddddddd", "bbbbbb"], ["cc", "a"]]


def test_flush_every_must_be_positive(tmp_path) -> None:
    with pytest.raises(ValueError, match="flush_every"):
        CachedChatModel(CountingModel(), GenerationCache(tmp_path / "c.sqlite"), flush_every=0)


# ---------------------------------------------------------------- replies that arrived before a failure

class FailsOnSome(CountingModel):
    """Answers every request except those whose text is in `failing`: then the batch raises `error` carrying the
    answered ones, as OpenAIChatModel does (None in the failed slots)."""

    def __init__(self, failing: set[str], error: type[BaseException] = PartialGenerationError) -> None:
        super().__init__()
        self.failing = failing
        self.error = error

    def generate(self, requests, progress=True):
        answered = super().generate(requests, progress)
        slots = [None if r.messages[-1].content in self.failing else c for r, c in zip(requests, answered)]
        if None in slots:
            raise self.error("scripted failure", slots)
        return answered


@pytest.mark.parametrize("error", [PartialGenerationError, GenerationInterrupted])
def test_replies_that_arrived_before_a_failure_are_cached_and_passed_on(tmp_path, error, open_cache) -> None:
    """A failed request used to take its chunk's answered (paid) siblings down with it: none was cached."""
    path = tmp_path / "c.sqlite"
    CachedChatModel(CountingModel(), open_cache(path)).generate([_request("hit")])
    model = CachedChatModel(FailsOnSome({"c"}, error), open_cache(path))
    with pytest.raises(error) as caught:
        model.generate([_request(x) for x in ("a", "hit", "c", "d")], progress=False)
    slots = caught.value.completions  # mapped to this call's request order, the hit included
    assert [s and s.text for s in slots] == ["echo a", "echo hit", None, "echo d"]
    assert [s and s.cached for s in slots] == [False, True, None, False]
    inner = CountingModel()
    CachedChatModel(inner, open_cache(path)).generate([_request(x) for x in ("a", "hit", "c", "d")])
    assert inner.calls == [["c"]], "the replies that arrived must not be asked (and paid) for again"


def test_an_error_after_earlier_chunks_carries_their_completions(tmp_path, open_cache) -> None:
    class DiesOnSecondChunk(CountingModel):
        def generate(self, requests, progress=True):
            if self.calls:
                raise ConnectionError("server went away")
            return super().generate(requests, progress)

    model = CachedChatModel(DiesOnSecondChunk(), open_cache(tmp_path / "c.sqlite"), flush_every=2)
    with pytest.raises(PartialGenerationError, match="2 of 4 requests had completed") as caught:
        model.generate([_request(x) for x in ("aaaa", "bbb", "cc", "d")], progress=False)
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert [s and s.text for s in caught.value.completions] == ["echo aaaa", "echo bbb", None, None]


def test_an_error_with_nothing_new_passes_through_unchanged(tmp_path, open_cache) -> None:
    class Broken(CountingModel):
        def generate(self, requests, progress=True):
            raise ConnectionError("refused")

    path = tmp_path / "c.sqlite"
    CachedChatModel(CountingModel(), open_cache(path)).generate([_request("hit")])
    with pytest.raises(ConnectionError, match="refused"):  # only a hit: nothing was paid, nothing to carry
        CachedChatModel(Broken(), open_cache(path)).generate([_request("hit"), _request("new")])


# ---------------------------------------------------------------- a damaged cache file

def test_a_garbage_cache_file_names_itself_and_the_way_out(tmp_path) -> None:
    """sqlite's bare 'file is not a database' said neither which file nor what to do."""
    path = tmp_path / "generations.sqlite"
    path.write_bytes(b"\x00not sqlite at all\xff" * 512)
    with pytest.raises(CorruptCacheError) as caught:
        GenerationCache(path)
    message = str(caught.value)
    assert str(path) in message and "Move it aside" in message and "cache.path" in message
    assert "file is not a database" in message


def test_an_undecodable_stored_value_names_the_file_and_key(tmp_path) -> None:
    path = tmp_path / "generations.sqlite"
    cache = GenerationCache(path)
    key = cache_key("fake", "fake-1", _request("a"))
    with sqlite3.connect(path) as connection:
        connection.execute("INSERT INTO completions VALUES (?, ?, 0)", (key, '{"texts": ["trunc'))
    with pytest.raises(CorruptCacheError, match=f"{key} is not a completion") as caught:
        CachedChatModel(CountingModel(), cache).generate([_request("a")])
    assert str(path) in str(caught.value) and "cache.path" in str(caught.value)


def test_one_progress_bar_spans_every_chunk_and_counts_hits_as_done(tmp_path, open_cache) -> None:
    """The backend reports into the wrapper's bar (one per call), so it moves inside chunks, not once per chunk."""
    from bench.models.progress import GenerationProgress

    class ReportingModel(CountingModel):
        def __init__(self) -> None:
            super().__init__()
            self.bars: list[GenerationProgress] = []

        def generate(self, requests, progress=True):
            assert isinstance(progress, GenerationProgress)
            self.bars.append(progress)
            progress.advance(len(requests))
            return super().generate(requests, progress)

    inner = ReportingModel()
    model = CachedChatModel(inner, open_cache(tmp_path / "c.sqlite"), flush_every=2)
    model.generate([_request("a")], progress=False)
    model.generate([_request(x) for x in "abcde"])
    bar = inner.bars[-1]
    assert len(inner.bars) == 3 and inner.bars[1] is bar  # the second call's two chunks share one bar
    assert (bar.total, bar.done) == (5, 5)  # 1 hit + 4 generated


def test_each_completion_is_stored_the_moment_it_arrives(tmp_path, open_cache) -> None:
    """A run killed with -9 mid-chunk lost every reply of that chunk (stored only when the chunk returned), so the
    resumed run asked the server again for replies it had already been given. A process that dies without a
    Python exception carrying them is stood in for by an error that carries nothing."""

    class DiesAfterTheFirstReply(CountingModel):
        def generate(self, requests, progress=True):
            first = super().generate(requests[:1], progress)[0]
            progress.completed(0, first)
            raise SystemExit("killed")

    cache = open_cache(tmp_path / "c.sqlite")
    with pytest.raises(SystemExit):
        CachedChatModel(DiesAfterTheFirstReply(), cache).generate([_request("a"), _request("b")])
    inner = CountingModel()
    results = CachedChatModel(inner, cache).generate([_request("a"), _request("b")])
    assert inner.calls == [["b"]] and results[0].cached and results[0].text.startswith("echo")


def test_a_reply_stored_as_it_arrived_is_not_stored_again_with_its_chunk(tmp_path, open_cache) -> None:
    """Backends that report each reply as it arrives (hf, openai) had it written twice: once on arrival, once more
    with the chunk; the sharded layout's shard held 6 lines for 3 replies, each with its fsync."""

    class Reporting(CountingModel):
        def generate(self, requests, progress=True):
            completions = super().generate(requests, progress)
            for index, completion in enumerate(completions):
                progress.completed(index, completion)
            return completions

    class CountingStore:
        def __init__(self, inner) -> None:
            self.inner, self.written = inner, []

        def get_many(self, keys):
            return self.inner.get_many(keys)

        def put_many(self, items):
            self.written += [key for key, _ in items]
            self.inner.put_many(items)

    store = CountingStore(open_cache(tmp_path / "c.sqlite"))
    results = CachedChatModel(Reporting(), store).generate([_request(t) for t in "abc"])
    assert len(store.written) == len(set(store.written)) == 3
    assert [r.text for r in CachedChatModel(CountingModel(), store).generate([_request(t) for t in "abc"])] == \
        [r.text for r in results]
