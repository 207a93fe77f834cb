"""Task loaders on the local data, seeded splits, prompts and scoring."""

from __future__ import annotations

import gzip
import json
import socket
from pathlib import Path

import pytest

from bench.config import ScoringConfig, TaskConfig
from bench.scoring import Status
from bench.tasks import make_task
from bench.tasks.data import DataFormatError, DataUnavailableError, local_data_dirs, read_json_list, read_jsonl
from bench.tasks.gsm8k import worked_solution
from bench.tasks.multiarith import question_id

from compose import needs_data

CONFIGS = {
    "gsm8k": dict(hub_id="openai/gsm8k", hub_config="main", validation_size=200),
    "multiarith": dict(hub_id="ChilleD/MultiArith", validation_size=60, test_size=180),
    "humaneval": dict(hub_id="openai/openai_humaneval", validation_size=32, test_size=100),
}


def task_for(name: str, scoring: ScoringConfig | None = None, **overrides):
    config = TaskConfig(name=name, **{**CONFIGS[name], **overrides})
    return make_task(config, scoring)


@needs_data
@pytest.mark.parametrize(("name", "sizes"), [("gsm8k", (7273, 200, 1319)), ("multiarith", (340, 60, 180)),
                                             ("humaneval", (32, 32, 100))])
def test_local_loaders_give_documented_sizes(name: str, sizes: tuple[int, int, int]) -> None:
    splits = task_for(name).splits
    assert (len(splits.train), len(splits.validation), len(splits.test)) == sizes
    assert splits.source.startswith("local:")


@needs_data
@pytest.mark.parametrize("name", list(CONFIGS))
def test_splits_are_deterministic_disjoint_and_seeded(name: str) -> None:
    first, again, other = task_for(name).splits, task_for(name).splits, task_for(name, seed=99).splits
    assert first.ids() == again.ids()
    ids = first.ids()
    assert not (set(ids["train"]) & set(ids["validation"]) or set(ids["train"]) & set(ids["test"])
                or set(ids["validation"]) & set(ids["test"]))
    assert other.ids()["validation"] != ids["validation"]
    if name == "gsm8k":  # the official test set does not depend on the seed
        assert other.ids()["test"] == ids["test"]


@needs_data
def test_gsm8k_examples_and_solution_text() -> None:
    example = task_for("gsm8k").examples("train", limit=1)[0]
    assert example.id == "gsm8k/train/0" and example.answer == "72"
    assert "<<" not in example.solution and example.solution.endswith("The answer is 72.")
    assert worked_solution("a <<2*3=6>>6\n#### 1,000") == "a 6\nThe answer is 1000."


def test_multiarith_ids_do_not_depend_on_the_source() -> None:
    assert question_id(" Debby had  32 pieces.") == question_id("debby had 32 pieces.")
    assert question_id("a") != question_id("b")


@needs_data
def test_limit_takes_the_first_items_in_split_order() -> None:
    task = task_for("multiarith")
    assert task.examples("test", limit=5) == task.examples("test")[:5]
    with pytest.raises(ValueError, match="limit"):
        task.examples("test", limit=0)
    with pytest.raises(ValueError, match="unknown split"):
        task.examples("dev")


def test_malformed_jsonl_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "broken"\n')
    with pytest.raises(DataFormatError, match=r"train.jsonl:2: not valid JSON"):
        read_jsonl(path, ("question", "answer"))
    path.write_text('{"question": "q"}\n')
    with pytest.raises(DataFormatError, match=r"train.jsonl:1: missing field\(s\) \['answer'\]"):
        read_jsonl(path, ("question", "answer"))
    gz = tmp_path / "x.jsonl.gz"
    with gzip.open(gz, "wt") as stream:
        stream.write(json.dumps({"a": 1}) + "\nnot json\n")
    with pytest.raises(DataFormatError, match=r"x.jsonl.gz:2"):
        read_jsonl(gz, ("a",))
    items = tmp_path / "items.json"
    items.write_text('[{"sQuestion": "q", "lSolutions": [1]}, {"sQuestion": "q2"}]')
    with pytest.raises(DataFormatError, match="item 1"):
        read_json_list(items, ("sQuestion", "lSolutions"))


def test_malformed_local_task_file_fails_loading(tmp_path: Path) -> None:
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    with pytest.raises(DataFormatError, match="train.jsonl:2"):
        _ = task_for("gsm8k", local_dir=str(tmp_path), validation_size=0).splits


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="BENCH_DATA_DIR"):
        _ = task_for("gsm8k", local_dir=str(tmp_path)).splits


# Defect: the library fell back to ../shared/data next to the checkout by itself, a default of this deployment
# that belongs to the application's configuration (conf/config.yaml gives runs BENCH_DATA_DIR).
def test_the_library_reads_only_local_dir_and_bench_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = TaskConfig(name="gsm8k", **CONFIGS["gsm8k"])
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    assert local_data_dirs(config) == []
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "env"))
    assert local_data_dirs(config) == [tmp_path / "env"]
    config.local_dir = str(tmp_path / "own")
    assert local_data_dirs(config) == [tmp_path / "own"]


def test_no_data_folder_at_all_says_what_was_tried_and_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    with pytest.raises(DataUnavailableError) as caught:
        _ = task_for("gsm8k").splits
    message = str(caught.value)
    assert "local directories: none (task.local_dir and BENCH_DATA_DIR unset)" in message
    assert "Set BENCH_DATA_DIR (or task.local_dir)" in message and "hub openai/gsm8k: skipped" in message


@needs_data
def test_request_has_system_few_shot_and_question() -> None:
    task = task_for("gsm8k", few_shot=2, system_prompt="Be careful.")
    example = task.examples("test", limit=1)[0]
    request = task.request(example, few_shot=task.few_shot_examples())
    roles = [m.role for m in request.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert request.messages[0].content == "Be careful."
    assert request.messages[2].content.endswith("The answer is 72.")
    assert request.messages[-1].content.startswith(example.question) and "The answer is N" in request.messages[-1].content
    assert task.request(example, system_prompt="Learned rules").messages[0].content == "Learned rules"
    assert task.request(example, system_prompt="").messages[0].role == "user"


@needs_data
def test_math_scoring_with_both_modes() -> None:
    task = task_for("multiarith")
    example = task.examples("test", limit=1)[0]
    assert task.score(example, f"... The answer is {example.answer}.").status is Status.PASSED
    assert task.score(example, "The answer is 123456.").status is Status.FAILED
    assert task.score_details(example, f"so {example.answer}") == {"strict": "no_answer", "flexible": "passed"}


@needs_data
def test_humaneval_scoring_in_the_sandbox() -> None:
    task = task_for("humaneval", ScoringConfig(sandbox="nsjail", workers=2))
    examples = task.examples("test", limit=3)
    canonical = [f"```python\n{e.question}{e.answer}\n```" for e in examples]
    assert [v.status for v in task.score_many(examples, canonical, progress=False)] == [Status.PASSED] * 3
    assert task.score(examples[0], "    return None\n").status is Status.FAILED


def test_hub_multiarith_takes_worked_solutions_from_the_local_copy() -> None:
    """The hub mirror has only final answers; the teacher should see the local file's equation instead."""
    from bench.tasks.multiarith import build_examples

    local = [{"_local": True, "sQuestion": " Debby had 32 pieces and ate 5. How many are left? ",
              "lEquations": ["X=(32.0-5.0)"], "lSolutions": [27.0]},
             {"_local": True, "sQuestion": "Tom had 3 and got 4 more. How many?", "lEquations": ["X=(3.0+4.0)"],
              "lSolutions": [7.0]}]
    hub = [{"question": "Debby had 32 pieces and ate 5.  How many are left?", "final_ans": "27"},
           {"question": "Tom had 3 and got 4 more. How many?", "final_ans": "8"},  # answers disagree: no match
           {"question": "Ann has 2 cats. How many cats?", "final_ans": "2"}]  # not in the local copy
    debby, tom, ann = build_examples(hub, local)
    assert debby.solution == "(32 - 5) = 27. The answer is 27." and debby.extra["solution_source"] == "local_match"
    assert debby.id == question_id(local[0]["sQuestion"])
    assert (tom.solution, tom.extra["solution_source"]) == ("The answer is 8.", "answer_only")
    assert (ann.solution, ann.extra["solution_source"]) == ("The answer is 2.", "answer_only")
    assert [e.extra["solution_source"] for e in build_examples(local)] == ["local", "local"]
    assert [e.solution for e in build_examples(hub)] == [f"The answer is {n}." for n in (27, 8, 2)]


def test_multiarith_from_the_hub_records_where_its_solutions_came_from(tmp_path: Path, monkeypatch) -> None:
    import bench.tasks.multiarith as multiarith

    (tmp_path / "multiarith").mkdir()
    (tmp_path / "multiarith" / "MultiArith.json").write_text(json.dumps(
        [{"sQuestion": f"Sam had {n} apples and got 1 more. How many?", "lEquations": [f"X=({n}.0+1.0)"],
          "lSolutions": [n + 1.0]} for n in range(6)]))
    hub = [{"question": f"Sam had {n} apples and got 1 more. How many?", "final_ans": str(n + 1)} for n in range(6)]
    monkeypatch.setattr(multiarith, "load_records", lambda config, split, reader: (hub, "hub:ChilleD/MultiArith:x"))
    splits = task_for("multiarith", local_dir=str(tmp_path), validation_size=1, test_size=2).splits
    assert splits.source == f"hub:ChilleD/MultiArith:x (worked solutions matched from local:{tmp_path})"
    examples = splits.train + splits.validation + splits.test
    assert {e.extra["solution_source"] for e in examples} == {"local_match"}
    assert all(e.solution.startswith("(") and e.solution.endswith(f"The answer is {e.answer}.") for e in examples)


def test_an_unreachable_hub_is_probed_once_and_never_retried(tmp_path: Path, monkeypatch) -> None:
    """Offline, `datasets` spent ~23 s of retries on each split of the default run (two per GSM8K run, every run);
    in `auto` mode a few-second probe now decides, and its answer holds for the rest of the process."""
    import datasets

    from bench.tasks import data

    with socket.socket() as closed:  # a port that refuses connections: what an offline machine sees, but fast
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    data.hub_reachable.cache_clear()
    calls: list[str] = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append(args[0]))
    local = [{"question": "q", "answer": "a"}]
    config = TaskConfig(name="gsm8k", **CONFIGS["gsm8k"])
    for split in ("train", "test"):
        records, source = data.load_records(config, split, lambda root: local, extra_local=[tmp_path])
        assert records == local and source.startswith("local:")
    assert calls == []
    assert data.hub_reachable.cache_info().misses == 1
    data.hub_reachable.cache_clear()


def test_a_listening_hub_is_reachable() -> None:
    from bench.tasks.data import hub_reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert hub_reachable(f"http://127.0.0.1:{server.getsockname()[1]}", 2.0)
