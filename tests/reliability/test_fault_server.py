"""Teacher API faults end to end against the scripted OpenAI-protocol server on localhost.

Ctrl-C while teacher requests are hanging or being retried (the process must stop sending and exit in seconds,
keeping the replies that arrived), and a failed request among paid siblings in CD's `induce` and RP-KD's teacher
solutions (the failed run must leave its spend on disk, and its resumed run must not pay for those replies again).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from compose import compose_config, isolated
from conftest import REPO_ROOT
from scripted_server import ScriptedServer, Step

from bench.context import RunContext
from bench.methods.cd_rules import Mistake
from bench.methods import Method, make_method
from bench.methods.rpkd_signal import TeacherUsage
from bench.models.base import PartialGenerationError
from bench.models.cache import GenerationCache
from bench.models.cost import FAILED_USAGE_LEDGER
from bench.tracking import RunStore, Tracker
from bench.training.priming import Priming

pytestmark = pytest.mark.timeout(300)

EXIT_WITHIN_S = 5.0  # after Ctrl-C; it used to be the request timeout or the whole retry schedule, per request
CHILD = """
import sys
from pathlib import Path
from bench.models.base import GenerationRequest, SamplingParams
from bench.models.cache import CachedChatModel, GenerationCache
from bench.models.openai_api import OpenAIChatModel

base_url, cache_path = sys.argv[1], sys.argv[2]
teacher = OpenAIChatModel("scripted", base_url=base_url, max_concurrency=2, max_retries=5, request_timeout_s=60)
model = CachedChatModel(teacher, GenerationCache(Path(cache_path)))
model.generate([GenerationRequest.chat(None, f"question {i}", SamplingParams(max_new_tokens=8)) for i in range(8)],
               progress=False)
"""


def _wait_for_requests(server: ScriptedServer, count: int, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120  # importing openai/hydra in the child takes a while on a busy machine
    while len(server.log) < count:
        if child.poll() is not None:
            pytest.fail(f"the child exited early: {child.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the server saw {len(server.log)} requests, expected {count}")
        time.sleep(0.05)


def _default_sigint() -> None:
    """Ctrl-C as a terminal delivers it: a suite started in the background of a non-interactive shell (nohup ... &,
    some CI runners) passes SIGINT on ignored, and a child that inherits that never sees the signal at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(child: subprocess.Popen) -> tuple[float, float, str]:
    """Send SIGINT; (monotonic time sent, seconds until exit, stderr). A child still alive after a generous
    limit is killed so the test reports the figure instead of hanging."""
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    try:
        _, stderr = child.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        _, stderr = child.communicate()
    return sent, time.monotonic() - sent, stderr


@pytest.mark.parametrize("fault", ["hanging", "retrying"])
def test_ctrl_c_stops_sending_exits_in_seconds_and_keeps_the_replies_that_arrived(tmp_path: Path, fault: str) -> None:
    """It used to wait for every queued request (and every retry's sleep) before exiting: 37 s with an 8 s timeout,
    minutes with the defaults, sending new requests all along."""
    later = [Step(delay_s=60)] * 6 if fault == "hanging" else [Step(503)] * 200  # 503s: backoff 0.5-1 s, 1-2 s, ...
    with ScriptedServer([200, 200, *later]) as server:
        cache_path = tmp_path / "cache.sqlite"
        child = subprocess.Popen([sys.executable, "-c", CHILD, server.base_url, str(cache_path)],
                                 env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=_default_sigint)
        _wait_for_requests(server, 5 if fault == "retrying" else 4, child)  # 2 answered, the rest hanging/retrying
        time.sleep(0.3)
        sent, exit_s, stderr = _interrupt(child)
        late = server.requests_after(sent + 0.1)  # 0.1 s: a request already on its way when the signal landed
    assert exit_s < EXIT_WITHIN_S, f"exit took {exit_s:.1f}s after Ctrl-C"
    assert late == [], f"{len(late)} requests were sent after Ctrl-C"
    assert "GenerationInterrupted" in stderr and "2 of 8 requests" in stderr
    assert len(GenerationCache(cache_path)) == 2, "the two replies that arrived before Ctrl-C were not cached"


# ---------------------------------------------------------------- a failed request among paid siblings

RULES_REPLY = ("EXPLANATION: The student skipped steps.\nRULES:\n- Write every calculation on its own line.\n"
               "- End with 'The answer is N.'\n")
PRICE_PER_REPLY = 5 * 400 / 1e6  # the server's 5 completion tokens at $400 per Mtok (prompt tokens free)


def _context(tmp_path: Path, base_url: str, method: str, *extra: str) -> tuple[RunContext, Method]:
    """A run context and the method, for calling one phase directly: the real config, models and cache, a
    stand-in task."""
    config = compose_config([f"method={method}", "student=tiny", "teacher=openai_compatible",
                             f"teacher.base_url={base_url}", "teacher.model_id=scripted-teacher",
                             "teacher.price_output_per_mtok=400", "teacher.max_retries=0", "task=gsm8k",
                             *isolated(tmp_path, method), *extra])
    task = SimpleNamespace(name="gsm8k", config=OmegaConf.to_object(config.task), description="grade-school math word problems.",
                           user_message=lambda example: example.question,
                           reference_text=lambda example: example.solution,
                           training_target=lambda example: example.solution,
                           score_many=lambda examples, texts, progress=True: [
                               SimpleNamespace(passed=True, status=SimpleNamespace(value="passed")) for _ in texts])
    ctx = RunContext.from_config(config, ("student", "teacher"), task=task, store=RunStore(tmp_path / "run"),
                                 tracker=Tracker(), run_id="t", progress=False)
    return ctx, make_method(config.method)


def _ledger(store: RunStore, relative: str) -> list[dict]:
    return [json.loads(line) for line in store.path(relative).read_text().splitlines()]


def test_cd_induce_failure_leaves_its_spend_on_disk_and_the_resume_pays_only_the_rest(tmp_path: Path) -> None:
    """A 400 among three teacher calls used to discard the two served replies: not cached, not costed, paid again
    by the resumed run, whose teacher_usage then reported 3 of the 5 replies the server had served."""
    mistakes = [Mistake(task_id=f"t{i}", question=f"What is {i} + {i}?", student_output="5", reference=f"{2 * i}",
                        status="wrong", detail=f"expected {2 * i}") for i in range(3)]
    overrides = ("method.mistakes_per_call=1", "method.calls_per_round=3")
    # the 400 comes after 0.5 s, so its two siblings are sent and served; then the script is spent: it recovers
    with ScriptedServer([Step(400, delay_s=0.5)], reply=RULES_REPLY) as server:
        ctx, method = _context(tmp_path, server.base_url, "cd", *overrides)
        with pytest.raises(PartialGenerationError, match="1 of 3 requests"):
            method.induce(ctx, mistakes)
        served_before = server.served
        (failed,) = _ledger(ctx.store, FAILED_USAGE_LEDGER)
        assert failed["phase"] == "induce" and failed["error"].startswith("PartialGenerationError")
        assert (failed["calls"], failed["cached"], served_before) == (2, 0, 2)
        assert failed["spent_usd"] == pytest.approx(served_before * PRICE_PER_REPLY)

        ctx, method = _context(tmp_path, server.base_url, "cd", *overrides)  # the resumed run: same folder, cache
        _, usage = method.induce(ctx, mistakes)
    assert server.served - served_before == 1 and (usage["calls"], usage["cached"]) == (3, 2)
    assert failed["spent_usd"] + usage["spent_usd"] == pytest.approx(server.served * PRICE_PER_REPLY)


def test_rpkd_teacher_solutions_failure_leaves_its_spend_on_disk(tmp_path: Path) -> None:
    examples = [SimpleNamespace(id=f"e{i}", question=f"What is {i} + {i}?") for i in range(4)]
    priming = Priming("Explain it to a student.", raw_prefix=False)
    overrides = ("method.signal=sequence", "method.arms=[no_train,ground_truth]")
    with ScriptedServer([Step(400, delay_s=0.5)], reply="The answer is 4.") as server:
        ctx, method = _context(tmp_path, server.base_url, "rpkd", *overrides)
        with pytest.raises(PartialGenerationError, match="1 of 4 requests"):
            method.teacher_priming.teacher_solutions(ctx, "ground_truth", priming, examples, TeacherUsage())
        served_before = server.served
        (failed,) = _ledger(ctx.store, f"artifacts/ground_truth/{FAILED_USAGE_LEDGER}")
        assert failed["phase"] == "prime_ground_truth" and (failed["calls"], served_before) == (3, 3)
        assert failed["spent_usd"] == pytest.approx(served_before * PRICE_PER_REPLY)

        ctx, method = _context(tmp_path, server.base_url, "rpkd", *overrides)
        usage = TeacherUsage()
        kept = method.teacher_priming.teacher_solutions(ctx, "ground_truth", priming, examples, usage)
    assert len(kept) == 4 and usage.calls == 4
    assert server.served - served_before == 1, "the resumed run paid again for replies the failed run had received"
