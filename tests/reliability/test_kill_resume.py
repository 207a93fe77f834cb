"""Kill -9 and resume, for every method, through the real CLI: the resumed run must end where an uninterrupted
run of the same command ends, and must not pay again for teacher requests it already had answered.

For each method the same `python -m bench ...` command runs twice, each with its own results_dir and its own
generation cache (so the uninterrupted run cannot warm the cache for the other): once to the end, and once
SIGKILLed at a point inside the method's work, then started again to the end. The two run folders must then hold
the same results: metrics.json, every sample, every metrics file, phase summary and artifact (CD's rules and
final prompt, RP-KD's and on-policy's loss rows and LoRA adapters bit for bit, on CPU), with only timings and
cache-hit counts (harness.VOLATILE_KEYS) left out.

Where the kill lands:
  baseline  mid generation: the teacher, evaluated over HTTP, has answered 3 of 8 requests, the rest are held;
  cd        mid induction: round 1 (2 teacher requests) is done, round 2 has 1 reply delivered and 1 held;
  rpkd      mid training of the primed arm (ground_truth) after its control (gt_finetune) finished: right after
            its first checkpoint (step 3 of 12);
  onpolicy  mid TRL training, right after its first checkpoint (step 3 of 6: the end of its first epoch of two).
The HTTP teacher is a real `transformers serve` (tests/conftest.py) behind harness.CountingProxy, which records
every request body and whether its reply was delivered (written in full, and GRACE_S given to the client to read
it before the kill). A request whose reply was delivered before the kill must not be sent again after it; a
request still in flight at the kill (sent, reply not delivered) may be, since its answer never reached the
harness. The tiny random teacher writes noise, so for CD the proxy frames each real reply in the RULES format
CD parses: induction then yields rules, deduction tests them, and the final prompt holds them.

Each method's runs cost tens of seconds (three CLI runs, two of them in parallel), so every test here is `slow`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import (CountingProxy, Exchange, bench_env, finished, folder_differences, kill_hard, log_tail,
                     read_jsonl, result_files, run_bench, run_folder, start_bench, wait_for, write_tiny_gsm8k)

EXPERIMENT = "reliability"
GRACE_S = 0.5  # after the proxy starts holding: time for the client to read the replies it was just sent


@dataclass(frozen=True)
class Scenario:
    """One method's command, where to kill it, and what must hold at that moment for the kill to be mid-work."""

    overrides: tuple[str, ...]
    kill_when: Callable[[Path, CountingProxy | None], bool]  # (killed run's results_dir, proxy) -> kill now
    mid_work: Callable[[Path], list[str]]  # problems if the killed folder is not mid-work
    http_teacher: bool = False
    hold_after: int = 0  # replies the killed run gets before the proxy holds the rest
    rewrite: Callable[[str], str] | None = None


def _folder(results: Path) -> Path | None:
    root = results / EXPERIMENT
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")] if root.is_dir() else []
    return found[0] if found else None


def _proxy_holding(results: Path, proxy: CountingProxy | None) -> bool:
    assert proxy is not None
    return proxy.holding("killed")


def _exists(pattern: str) -> Callable[[Path, CountingProxy | None], bool]:
    def condition(results: Path, proxy: CountingProxy | None) -> bool:
        folder = _folder(results)
        return folder is not None and any(folder.glob(pattern))

    return condition


def _trl_checkpoint(step: int) -> Callable[[Path, CountingProxy | None], bool]:
    """TRL writes trainer_state.json last in a checkpoint: once it parses, the checkpoint is complete."""
    def condition(results: Path, proxy: CountingProxy | None) -> bool:
        folder = _folder(results)
        state = folder / "artifacts" / "onpolicy" / "trainer" / f"checkpoint-{step}" / "trainer_state.json" \
            if folder else None
        try:
            return state is not None and json.loads(state.read_text())["global_step"] == step
        except (OSError, ValueError, KeyError):
            return False

    return condition


def _phases(done: tuple[str, ...], pending: tuple[str, ...], also: tuple[str, ...] = ()):
    """A mid-work check: these phases finished, those not yet, and these files present (a checkpoint)."""
    def check(folder: Path) -> list[str]:
        problems = [f"phase {p} not finished" for p in done if not (folder / "phases" / f"{p}.done").exists()]
        problems += [f"phase {p} already finished" for p in pending if (folder / "phases" / f"{p}.done").exists()]
        problems += [f"no {pattern}" for pattern in also if not any(folder.glob(pattern))]
        return problems

    return check


def _as_rules(text: str) -> str:
    """Frame the tiny teacher's real (random) text as the reply CD asks for, so induction yields rules."""
    words = " ".join(text.split()) or "no words"
    return f"EXPLANATION: The student did not check its work.\nRULES:\n- Remember this: {words}\n"


TINY = ("student=tiny", "task=gsm8k", "task.limit=6", "task.max_new_tokens=8", "task.validation_size=4",
        "logger=none", f"experiment={EXPERIMENT}")
HTTP_TEACHER = ("teacher=openai_compatible",)  # base_url and model_id are the proxy's and the served model's
# teacher.seed=1: another random tiny model. The same weights as the student would give a zero KD loss and an
# adapter that never moves, and bit-identical adapters would prove nothing.

SCENARIOS: dict[str, Scenario] = {
    "baseline": Scenario(
        overrides=("method=baseline", "method.model=teacher", *HTTP_TEACHER, "task.limit=8"),
        kill_when=_proxy_holding, mid_work=_phases((), ()), http_teacher=True, hold_after=3),
    "cd": Scenario(
        overrides=("method=cd", *HTTP_TEACHER, "method.train_sample=8", "method.max_mistakes=8",
                   "method.mistakes_per_call=2", "method.calls_per_round=2", "method.rules_per_call=1",
                   "method.teacher_max_new_tokens=12", "method.acceptance=gain", "method.min_gain=-1",
                   "method.max_rules=3"),
        kill_when=_proxy_holding, mid_work=_phases(("initialize",), ("induce",)), http_teacher=True, hold_after=3,
        rewrite=_as_rules),
    "rpkd": Scenario(
        overrides=("method=rpkd", "method.arms=[no_train,gt_finetune,ground_truth]", "teacher=tiny", "teacher.seed=1",
                   "method.train_limit=6", "method.train.epochs=2", "method.train.save_every=3"),
        kill_when=_exists("artifacts/ground_truth/checkpoint/state.pt"),
        mid_work=_phases(("train_gt_finetune", "prime_ground_truth"), ("train_ground_truth",),
                         ("artifacts/ground_truth/checkpoint*/state.pt",))),  # .old too: killed mid-swap
    "onpolicy": Scenario(
        overrides=("method=onpolicy", "teacher=tiny", "teacher.seed=1", "method.train_limit=3",
                   "method.train.epochs=2", "method.train.save_every=3"),
        kill_when=_trl_checkpoint(3),
        mid_work=_phases((), ("train_onpolicy",), ("artifacts/onpolicy/trainer/checkpoint-3/trainer_state.json",))),
}
HTTP = [name for name, scenario in SCENARIOS.items() if scenario.http_teacher]
TRAINING = {"rpkd": ("gt_finetune", "ground_truth"), "onpolicy": ("onpolicy",)}


@dataclass
class Pair:
    """The uninterrupted run's folder, the killed-then-resumed run's folder, and the proxy's record of both."""

    whole: Path
    resumed: Path
    exchanges: list[Exchange] = field(default_factory=list)

    def requests(self, run: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.run == run]


def run_pair(scenario: Scenario, tmp: Path, data: Path, server: tuple[str, str] | None) -> Pair:
    """The scenario's command uninterrupted (in the background) and, side by side, killed then resumed."""
    proxy = CountingProxy(server[0], rewrite=scenario.rewrite) if server else None
    with proxy or nullcontext():
        overrides = [*TINY, f"task.local_dir={data}", *scenario.overrides]
        if proxy and server:
            overrides += [f"teacher.base_url={proxy.base_url}", f"teacher.model_id={server[1]}"]
            proxy.hold("killed", scenario.hold_after)

        def command(name: str) -> list[str]:
            return [*overrides, f"results_dir={tmp / name / 'results'}", f"cache.path={tmp / name / 'cache.sqlite'}"]

        whole = start_bench(command("whole"), tmp / "whole.log", bench_env(OPENAI_API_KEY="whole"))
        try:
            folder = kill_mid_work(scenario, command("killed"), tmp, proxy)
            resumed = run_bench(command("killed"), bench_env(OPENAI_API_KEY="resumed"))
            assert resumed.returncode == 0, f"the resumed run failed:\n{resumed.stderr[-5000:]}"
            finished(whole, tmp / "whole.log")
        finally:
            if whole.poll() is None:
                whole.kill()
        return Pair(whole=run_folder(tmp / "whole" / "results", EXPERIMENT), resumed=folder,
                    exchanges=list(proxy.exchanges) if proxy else [])


def kill_mid_work(scenario: Scenario, command: list[str], tmp: Path, proxy: CountingProxy | None) -> Path:
    """Start `command`, SIGKILL it at the scenario's point, check the kill landed mid-work; its run folder."""
    log = tmp / "killed.log"
    killed = start_bench(command, log, bench_env(OPENAI_API_KEY="killed"))
    try:
        wait_for(lambda: scenario.kill_when(tmp / "killed" / "results", proxy), killed, log, "the kill point")
        if proxy:
            time.sleep(GRACE_S)
        kill_hard(killed)
    finally:
        if killed.poll() is None:
            killed.kill()
    folder = run_folder(tmp / "killed" / "results", EXPERIMENT)
    problems = scenario.mid_work(folder) + (["metrics.json written"] if (folder / "metrics.json").exists() else [])
    assert not problems, f"the kill did not land mid-work: {problems}\n{log_tail(log)}"
    return folder


class Pairs:
    """Each scenario's pair of runs, made on first use and shared by the tests that read it."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.request = request
        self.tmp_path_factory = tmp_path_factory
        self.data = write_tiny_gsm8k(tmp_path_factory.mktemp("data"))
        self.made: dict[str, Pair] = {}
        self.failed: dict[str, str] = {}

    def __getitem__(self, name: str) -> Pair:
        if name in self.failed:
            pytest.fail(f"the {name} runs failed earlier: {self.failed[name]}")
        if name not in self.made:
            scenario = SCENARIOS[name]
            server = self.request.getfixturevalue("openai_server") if scenario.http_teacher else None
            try:
                self.made[name] = run_pair(scenario, self.tmp_path_factory.mktemp(name), self.data, server)
            except Exception as error:  # remembered: the next test of this scenario fails at once, not in minutes
                self.failed[name] = f"{type(error).__name__}: {str(error)[:3000]}"
                raise
        return self.made[name]


@pytest.fixture(scope="module")
def pairs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pairs]:
    yield Pairs(request, tmp_path_factory)


REPORTS = ("metrics.json", "samples/*.jsonl", "metrics/*.json", "metrics/*/*.json", "samples/*/*.jsonl")


def _reports(folder: Path) -> list[Path]:
    return sorted({p.relative_to(folder) for pattern in REPORTS for p in folder.glob(pattern)})


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_resumed_run_reports_what_the_uninterrupted_run_reports(pairs: Pairs, name: str) -> None:
    pair = pairs[name]
    assert pair.whole.name == pair.resumed.name  # one command, one config: the same run folder name
    reports = _reports(pair.whole)
    assert "metrics.json" in map(str, reports) and any(str(p).startswith("samples/") for p in reports)
    assert _reports(pair.resumed) == reports
    problems = folder_differences(pair.whole, pair.resumed, reports)
    assert not problems, "the resumed run reports other results:\n" + "\n".join(problems)


@pytest.mark.slow
def test_cd_resumed_run_learns_the_same_rules_and_final_prompt(pairs: Pairs) -> None:
    pair = pairs["cd"]
    whole, resumed = (json.loads((p / "metrics.json").read_text()) for p in (pair.whole, pair.resumed))
    assert "Follow these rules:" in whole["final_prompt"]  # induction and deduction did real work
    assert resumed["final_prompt"] == whole["final_prompt"]
    assert (pair.resumed / "final_prompt.txt").read_text() == (pair.whole / "final_prompt.txt").read_text()
    rules = [[rule["text"], rule["decision"]] for rule in read_jsonl(pair.whole / "candidate_rules.jsonl")]
    assert rules == [[rule["text"], rule["decision"]] for rule in read_jsonl(pair.resumed / "candidate_rules.jsonl")]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TRAINING))
def test_resumed_training_keeps_every_loss_row_and_the_same_adapter(pairs: Pairs, name: str) -> None:
    """The adapter bit for bit (same CPU, same seed: nothing may differ) and the loss of every step, those before
    the resume included (resumed_from_step says where the resume happened; that is all that may differ)."""
    pair = pairs[name]
    for arm in TRAINING[name]:
        whole_rows = read_jsonl(pair.whole / "artifacts" / arm / "losses.jsonl")
        resumed_rows = read_jsonl(pair.resumed / "artifacts" / arm / "losses.jsonl")
        steps = json.loads((pair.whole / "phases" / f"train_{arm}.done").read_text())["steps"]
        assert [row["step"] for row in whole_rows] == list(range(1, steps + 1))
        assert [row["step"] for row in resumed_rows] == list(range(1, steps + 1)), \
            f"{arm}: the resumed run's losses.jsonl lacks steps"
        losses = folder_differences(pair.whole, pair.resumed, [Path("artifacts") / arm / "losses.jsonl"])
        assert resumed_rows == whole_rows, f"{arm}: the resumed run's losses differ: {losses}"
        adapter = Path("artifacts") / arm / "adapter" / "adapter_model.safetensors"
        assert not folder_differences(pair.whole, pair.resumed, [adapter]), f"{arm}: the adapters differ"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_resumed_run_leaves_the_same_files(pairs: Pairs, name: str) -> None:
    """Every file of the two run folders (phases, splits, config, artifacts, checkpoints): the same set, the same
    contents (timings aside); nothing left over from the kill."""
    pair = pairs[name]
    files = result_files(pair.whole)
    assert result_files(pair.resumed) == files
    problems = folder_differences(pair.whole, pair.resumed, files)
    assert not problems, "the resumed run's files differ:\n" + "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("name", HTTP)
def test_no_delivered_teacher_request_is_sent_again(pairs: Pairs, name: str) -> None:
    """Counted at the proxy in front of the real server. Requests in flight at the kill (sent, no reply delivered)
    may be repeated after the resume; a request whose reply reached the harness must not be."""
    pair = pairs[name]
    whole = [e.body for e in pair.requests("whole")]
    killed = pair.requests("killed")
    delivered = {e.body for e in killed if e.delivered}
    in_flight = {e.body for e in killed if not e.delivered}
    resumed = [e.body for e in pair.requests("resumed")]
    assert whole and len(set(whole)) == len(whole), "the uninterrupted run sent a request twice"
    assert len(delivered) == SCENARIOS[name].hold_after and in_flight, "the kill was not mid-way"
    assert len(set(resumed)) == len(resumed), "the resumed run sent a request twice"
    assert set(resumed) <= set(whole), "the resumed run sent requests the uninterrupted run never sent"
    assert set(whole) <= delivered | set(resumed), "the killed and resumed runs together left requests unsent"
    repeated = delivered & set(resumed)
    assert not repeated, (f"{len(repeated)} of the {len(delivered)} teacher requests answered before the kill were "
                          f"sent again after the resume ({len(in_flight)} in flight at the kill may be)")
