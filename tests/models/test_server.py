"""Managed servers (server.engine): the composed command lines, the process lifecycle, and the run around them.

`transformers serve` is real and local, so the whole route (start, health check, generation, cache across ports,
stop at the end of a run) is tested against it. vLLM needs a GPU: its command line is asserted flag by flag, and
the LoRA-by-name route runs against tests/models/fake_engine.py, which parses those flags, lists the names they
serve and answers as the adapter each request names. Lifecycle failures (a crash, a hang, a server ignoring
SIGTERM, workers outliving their leader, Ctrl-C, the harness killed) run against the same fake.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from compose import compose_config, isolated, needs_data, only_run_folder

from bench.config import CacheConfig, DType, Engine, ModelConfig, ServerConfig
from bench.models import build_model
from bench.models.base import GenerationRequest, SamplingParams
from bench.models.cache import cache_key
from bench.models.engines import compose_launch, default_launcher, max_lora_rank
from bench.models.served import ServedModel
from bench.models.server import ManagedServer, ServerStartError, free_port

pytestmark = pytest.mark.timeout(300)

FAKE = Path(__file__).with_name("fake_engine.py")
FAKE_COMMAND = [sys.executable, str(FAKE)]


def served_config(engine: Engine = Engine.vllm, **changes) -> ModelConfig:
    server = ServerConfig(engine=engine, **changes.pop("server", {}))
    return ModelConfig(**{"name": "llama8b", "backend": "openai", "model_id": "org/llama-8b",
                          "server": server, **changes})


def fake_config(tmp_path: Path, **server) -> ModelConfig:
    return served_config(server={"command": FAKE_COMMAND, "env": {"FAKE_ENGINE_RECORD": str(tmp_path / "argv.jsonl"),
                                                                 **server.pop("env", {})},
                                 "startup_timeout_s": 60, **server})


def launches(tmp_path: Path) -> list[dict]:
    path = tmp_path / "argv.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def adapter(folder: Path, rank: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    (folder / "adapter_model.safetensors").write_bytes(f"weights of rank {rank} in {folder.name}".encode())
    return folder


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie has exited; only its exit status is left)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def requests(n: int = 2) -> list[GenerationRequest]:
    return [GenerationRequest.chat(None, f"What is {i} + {i}?", SamplingParams(max_new_tokens=6)) for i in range(n)]


# ------------------------------------------------------------------ command lines (no process)
def test_vllm_command_line_serves_the_model_and_every_adapter_by_name(tmp_path: Path) -> None:
    config = served_config(dtype=DType.bfloat16, revision="v2",
                           server={"args": ["--tensor-parallel-size", "2", "--max-model-len", "4096"],
                                   "command": ["/opt/vllm/bin/vllm", "serve"]})
    ground, confidence = adapter(tmp_path / "ground_truth", 4), adapter(tmp_path / "confidence", 16)
    launch = compose_launch(config, port=8123, adapters={"ground_truth": ground, "confidence": confidence})
    assert launch.argv == [
        "/opt/vllm/bin/vllm", "serve", "org/llama-8b", "--host", "127.0.0.1", "--port", "8123",
        "--served-model-name", "llama8b", "--dtype", "bfloat16", "--revision", "v2",
        "--enable-lora", "--max-lora-rank", "16",
        "--lora-modules", f"ground_truth={ground}", f"confidence={confidence}",
        "--tensor-parallel-size", "2", "--max-model-len", "4096"]
    assert launch.served_names == ["llama8b", "ground_truth", "confidence"]
    plain = compose_launch(served_config(server={"command": ["vllm", "serve"]}), port=9000)
    assert plain.argv == ["vllm", "serve", "org/llama-8b", "--host", "127.0.0.1", "--port", "9000",
                          "--served-model-name", "llama8b", "--dtype", "auto"]


def test_adapter_paths_vllm_would_split_go_in_its_json_form(tmp_path: Path) -> None:
    odd = adapter(tmp_path / "lr=0.1,r=4", 4)
    argv = compose_launch(served_config(server={"command": ["vllm", "serve"]}), port=1, adapters={"arm": odd}).argv
    assert json.loads(argv[argv.index("--lora-modules") + 1]) == {"name": "arm", "path": str(odd)}


def test_max_lora_rank_is_the_smallest_rank_vllm_accepts() -> None:
    assert [max_lora_rank([r]) for r in (1, 4, 8, 16, 17, 64, 300)] == [1, 8, 8, 16, 32, 64, 320]
    assert max_lora_rank([4, 40, 8]) == 64
    with pytest.raises(ValueError, match="exceeds"):
        max_lora_rank([1024])


def test_transformers_command_line(tiny_model_dir: Path) -> None:
    config = served_config(Engine.transformers, model_id=str(tiny_model_dir),
                           server={"command": ["transformers", "serve"], "args": ["--device", "cpu"]})
    launch = compose_launch(config, port=8124)
    assert launch.argv == ["transformers", "serve", str(tiny_model_dir), "--host", "127.0.0.1", "--port", "8124",
                           "--dtype", "auto", "--device", "cpu"]
    assert launch.served_names == [str(tiny_model_dir)]  # its pinned model answers to the name it was given
    assert default_launcher(Engine.transformers) == [str(Path(sys.executable).with_name("transformers")), "serve"]


@pytest.mark.skipif(shutil.which("vllm") is not None or Path(sys.executable).with_name("vllm").exists(),
                    reason="vLLM is installed here")
def test_a_missing_engine_says_how_to_get_it() -> None:
    with pytest.raises(FileNotFoundError, match=r"pip install vllm.*server\.command"):
        build_model(served_config())


@pytest.mark.parametrize("config, message", [
    (served_config(server={"args": ["--port", "1"], "command": ["vllm", "serve"]}), r"--port.*harness sets itself"),
    (served_config(server={"args": ["--dtype=half"], "command": ["vllm", "serve"]}), r"--dtype=half"),
    (served_config(backend="hf", server={"command": ["vllm", "serve"]}), r"set backend=openai"),
    (served_config(base_url="http://h:1/v1", server={"command": ["vllm", "serve"]}), r"both base_url"),
    (served_config(model_id="embedded:tiny-llama", server={"command": ["vllm", "serve"]}), r"cannot be served"),
    (served_config(model_id="./no/such/folder", server={"command": ["vllm", "serve"]}), r"no model folder"),
    (served_config(Engine.transformers, adapter_path="/x", server={"command": ["t", "serve"]}),
     r"cannot serve LoRA adapters"),
    (served_config(server={"command": ["vllm", "serve"], "port": 70000}), r"server.port=70000 is no port"),
    (served_config(server={"command": ["vllm", "serve"], "startup_timeout_s": 0}), r"startup_timeout_s must be > 0"),
])
def test_configs_a_server_cannot_run_fail_when_the_model_is_built(config: ModelConfig, message: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        build_model(config)


def test_a_served_models_id_names_engine_weights_and_adapter_never_the_port(tmp_path: Path) -> None:
    """Generation cache keys come from model_id: a port in it would miss the cache on every run."""
    arm = adapter(tmp_path / "arm", 4)
    first = ServedModel(fake_config(tmp_path, port=free_port()), {"arm": arm})
    second = ServedModel(fake_config(tmp_path, port=free_port()), {"arm": arm})
    assert first.model_id() == second.model_id() == "served:vllm:org/llama-8b"
    assert first.model_id("arm") == second.model_id("arm")
    trained = first.model_id("arm")
    assert trained.startswith("served:vllm:org/llama-8b+lora:")
    (arm / "adapter_model.safetensors").write_bytes(b"retrained")
    assert ServedModel(fake_config(tmp_path), {"arm": arm}).model_id("arm") != trained
    revised = ServedModel(dataclasses.replace(fake_config(tmp_path), revision="v2"))
    assert revised.model_id() == "served:vllm:org/llama-8b@v2"
    distilled = ServedModel(dataclasses.replace(fake_config(tmp_path), adapter_path=str(arm)))  # its own adapter
    assert distilled.adapter_names == ["adapter"] and distilled.request_name() == "adapter"
    assert distilled.model_id() == ServedModel(fake_config(tmp_path), {"arm": arm}).model_id("arm")
    on_transformers = dataclasses.replace(fake_config(tmp_path), server=ServerConfig(
        engine=Engine.transformers, command=FAKE_COMMAND))
    assert ServedModel(on_transformers).model_id() == "served:transformers:org/llama-8b"


# ------------------------------------------------------------------ lifecycle, against the fake engine
def test_one_server_answers_every_adapter_by_its_name_and_stops_with_its_group(tmp_path: Path) -> None:
    arms = {"gt_finetune": adapter(tmp_path / "gt", 4), "ground_truth": adapter(tmp_path / "ground", 4)}
    served = ServedModel(fake_config(tmp_path, env={"FAKE_ENGINE_MODE": "spawn", "FAKE_ENGINE_DELAY_S": "1"}), arms,
                         log_path=tmp_path / "logs" / "server.log")
    assert served.server is None, "nothing starts before the first request"
    with served:
        texts = {name: served.chat_model(name).generate(requests(2), progress=False)[0].text
                 for name in (None, "gt_finetune", "ground_truth")}
        (launch,) = launches(tmp_path)
        assert launch["pid"] == served.server.pid
        port = served.server.port
    assert texts == {None: "[llama8b] The answer is 4.", "gt_finetune": "[gt_finetune] The answer is 4.",
                     "ground_truth": "[ground_truth] The answer is 4."}
    assert launch["argv"] == ["org/llama-8b", "--host", "127.0.0.1", "--port", str(port), "--served-model-name",
                              "llama8b", "--dtype", "auto", "--enable-lora", "--max-lora-rank", "8", "--lora-modules",
                              f"gt_finetune={arms['gt_finetune'].resolve()}",
                              f"ground_truth={arms['ground_truth'].resolve()}"]
    assert not alive(launch["pid"]) and not alive(launch["child"]), "the leader and its worker are gone"
    assert "serving ['llama8b', 'gt_finetune', 'ground_truth']" in (tmp_path / "logs" / "server.log").read_text()


def test_a_stopped_server_starts_again_on_a_fresh_port_for_the_next_request(tmp_path: Path) -> None:
    model = ServedModel(fake_config(tmp_path)).chat_model()
    model.generate(requests(1), progress=False)
    model_id = model.model_id
    model.stop_server()
    assert model.generate(requests(1), progress=False)[0].text == "[llama8b] The answer is 4."
    assert model.model_id == model_id
    model.stop_server()
    first, second = launches(tmp_path)
    assert first["pid"] != second["pid"] and not alive(first["pid"]) and not alive(second["pid"])


def test_a_server_that_exits_at_startup_fails_with_its_last_log_lines(tmp_path: Path) -> None:
    served = ServedModel(fake_config(tmp_path, env={"FAKE_ENGINE_MODE": "crash"}), log_path=tmp_path / "s.log")
    with pytest.raises(ServerStartError, match=r"(?s)exited with status 3.*CUDA out of memory"):
        served.chat_model().generate(requests(1), progress=False)
    assert served.server is None


def test_a_server_that_never_gets_ready_times_out_and_is_killed(tmp_path: Path) -> None:
    served = ServedModel(fake_config(tmp_path, startup_timeout_s=2, env={"FAKE_ENGINE_MODE": "silent"}))
    started = time.monotonic()
    with pytest.raises(ServerStartError, match=r"(?s)did not answer \(.*Connection.*startup_timeout_s=2.*loading org"):
        served.chat_model().generate(requests(1), progress=False)
    assert time.monotonic() - started < 30
    (launch,) = launches(tmp_path)
    assert not alive(launch["pid"])


def test_a_server_that_does_not_list_a_name_is_not_ready(tmp_path: Path) -> None:
    """Listening is not enough: the port might answer for another server, or without the adapter."""
    server = ManagedServer([*FAKE_COMMAND, "m", "--host", "127.0.0.1", "--port", str(port := free_port())], port,
                           ["m", "missing_adapter"], tmp_path / "s.log", startup_timeout_s=2)
    with pytest.raises(ServerStartError, match=r"does not list \['missing_adapter'\] \(it lists \['m'\]\)"):
        server.start()
    assert server.pid is None


def test_a_server_ignoring_sigterm_and_a_worker_outliving_it_are_killed(tmp_path: Path) -> None:
    port = free_port()
    server = ManagedServer([*FAKE_COMMAND, "m", "--host", "127.0.0.1", "--port", str(port)], port, ["m"],
                           tmp_path / "s.log", stop_timeout_s=1, env={"FAKE_ENGINE_MODE": "stubborn,spawn",
                                                                      "FAKE_ENGINE_RECORD": str(tmp_path / "argv.jsonl")})
    server.start()
    (launch,) = launches(tmp_path)
    assert alive(launch["pid"]) and alive(launch["child"])
    server.stop()
    assert not alive(launch["pid"]) and not alive(launch["child"])
    server.stop()  # twice is harmless


def test_a_taken_port_is_refused_by_name(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerStartError, match=rf"port {port} on 127.0.0.1 is taken"):
            ServedModel(fake_config(tmp_path, port=port)).start()
    assert launches(tmp_path) == []


def test_ctrl_c_while_waiting_for_the_server_stops_it(tmp_path: Path, monkeypatch) -> None:
    def interrupted_probe(self) -> None:  # Ctrl-C lands while the health check polls a loading server
        while not launches(tmp_path):
            time.sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(ManagedServer, "_listed_names", interrupted_probe)
    served = ServedModel(fake_config(tmp_path, env={"FAKE_ENGINE_MODE": "silent"}))
    with pytest.raises(KeyboardInterrupt):
        served.start()
    (launch,) = launches(tmp_path)
    assert not alive(launch["pid"]) and served.server is None


def test_a_server_that_dies_mid_run_is_reported_not_silently_restarted(tmp_path: Path) -> None:
    served = ServedModel(fake_config(tmp_path, env={"FAKE_ENGINE_MODE": "die_after_ready"}),
                         log_path=tmp_path / "s.log")
    served.start()
    deadline = time.monotonic() + 20
    while served.running and time.monotonic() < deadline:
        time.sleep(0.2)
    with pytest.raises(ServerStartError, match=r"exited during the run"):
        served.start()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_harness_takes_its_server_down(tmp_path: Path) -> None:
    """SIGKILL runs no finally and no atexit: the kernel's parent-death signal is what stops the server then."""
    harness = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from pathlib import Path
        from bench.models.server import ManagedServer, free_port
        port = free_port()
        server = ManagedServer({FAKE_COMMAND!r} + ["m", "--host", "127.0.0.1", "--port", str(port)], port, ["m"],
                               Path({str(tmp_path / 's.log')!r}))
        server.start()
        print(server.pid, flush=True)
        time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", harness], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(process.stdout.readline())
        assert alive(pid)
        process.kill()
        process.wait()
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(pid), "the server outlived the harness"
    finally:
        process.kill()


# ------------------------------------------------------------------ the real `transformers serve`
def test_transformers_serve_generates_and_a_run_on_another_port_hits_the_cache(tiny_model_dir: Path,
                                                                               tmp_path: Path) -> None:
    cache = CacheConfig(path=str(tmp_path / "cache.sqlite"))
    config = served_config(Engine.transformers, model_id=str(tiny_model_dir),
                           server={"args": ["--device", "cpu"], "startup_timeout_s": 180})
    first = build_model(config, cache, server_log=tmp_path / "first.log")
    texts = [c.text for c in first.generate(requests(2), progress=False)]
    assert all(texts) and first.model_id == f"served:transformers:{tiny_model_dir}"
    port = first.inner.served.server.port
    first.stop_server()
    assert first.inner.served.server is None

    elsewhere = dataclasses.replace(config, server=dataclasses.replace(config.server, port=free_port()))
    assert elsewhere.server.port != port
    second = build_model(elsewhere, cache, server_log=tmp_path / "second.log")
    assert [cache_key(second.backend, second.model_id, r) for r in requests(2)] == \
           [cache_key(first.backend, first.model_id, r) for r in requests(2)]
    again = second.generate(requests(2), progress=False)
    assert [c.text for c in again] == texts and all(c.cached for c in again)
    assert second.inner.served.server is None, "every answer came from the cache: no server was started"


@needs_data
def test_a_baseline_run_serves_its_student_and_stops_the_server_at_the_end(tiny_model_dir: Path, tmp_path: Path,
                                                                           monkeypatch) -> None:
    from bench.__main__ import execute

    pids = record_server_pids(monkeypatch)
    config = compose_config(["task=gsm8k", "task.limit=2", "task.max_new_tokens=6", "student=tiny",
                             "student.tiny=false", f"student.model_id={tiny_model_dir}", "student.backend=openai",
                             "student.server.engine=transformers", "student.server.args=[--device,cpu]",
                             *isolated(tmp_path, "served")])
    metrics = execute(config, progress=False)
    assert metrics["models"]["student"] == f"served:transformers:{tiny_model_dir}"
    folder = only_run_folder(tmp_path, "served")
    assert (folder / "logs" / "server-student.log").exists()
    assert len(pids) == 1 and not alive(pids[0])


def record_server_pids(monkeypatch) -> list[int]:
    pids: list[int] = []
    original = ManagedServer.start

    def start(self):
        try:
            return original(self)
        finally:
            if self.pid is not None:
                pids.append(self.pid)

    monkeypatch.setattr(ManagedServer, "start", start)
    return pids


# ------------------------------------------------------------------ runs, against the fake engine
def fake_student(tmp_path: Path, model_dir: Path | str = "org/llama-8b") -> list[str]:
    return ["student=tiny", "student.tiny=false", f"student.model_id={model_dir}", "student.backend=openai",
            "student.server.engine=vllm", f"student.server.command=[{sys.executable},{FAKE}]",
            f"+student.server.env.FAKE_ENGINE_RECORD={tmp_path / 'argv.jsonl'}"]


@needs_data
@pytest.mark.parametrize("failure", [RuntimeError("scorer broke"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_run_stops_its_server(tmp_path: Path, monkeypatch, failure) -> None:
    import bench.context as context
    from bench.__main__ import execute

    def evaluate(task, model, examples, **kwargs):
        model.generate(requests(1), progress=False)  # the server is up and answering
        raise failure

    monkeypatch.setattr(context, "evaluate", evaluate)
    config = compose_config(["task=gsm8k", "task.limit=2", *fake_student(tmp_path), *isolated(tmp_path, "f")])
    with pytest.raises(type(failure)):
        execute(config, progress=False)
    (launch,) = launches(tmp_path)
    assert not alive(launch["pid"])


@needs_data
def test_rpkd_arms_are_evaluated_on_one_vllm_server_each_by_its_adapters_name(tiny_model_dir: Path,
                                                                             tmp_path: Path) -> None:
    """Training reads the served student's weights in-process; evaluation starts one server with every adapter
    (--enable-lora --lora-modules <arm>=<adapter>) and asks for each arm by name. The token-level arm checks the
    served student's tokenizer against the local teacher's."""
    from bench.__main__ import execute

    config = compose_config([
        "method=rpkd", "teacher=tiny", "task=gsm8k", "task.limit=2", "task.max_new_tokens=6",
        "method.arms=[no_train,gt_finetune,ground_truth]", "method.train_limit=2", "method.train.epochs=1",
        "method.train.max_length=128", *fake_student(tmp_path, tiny_model_dir), *isolated(tmp_path, "rpkd")])
    metrics = execute(config, progress=False)
    folder = only_run_folder(tmp_path, "rpkd")
    (launch,) = launches(tmp_path)  # one server for all three arms
    argv = launch["argv"]
    modules = argv[argv.index("--lora-modules") + 1:]
    assert modules == [f"gt_finetune={folder.resolve() / 'artifacts/gt_finetune/adapter'}",
                       f"ground_truth={folder.resolve() / 'artifacts/ground_truth/adapter'}"]
    assert argv[argv.index("--max-lora-rank") + 1] == "8"  # RP-KD's r=4
    answered = {arm: {json.loads(line)["completion"] for line in (folder / f"samples/test_{arm}.jsonl")
                      .read_text().splitlines()} for arm in ("no_train", "gt_finetune", "ground_truth")}
    assert answered == {"no_train": {"[tiny] The answer is 4."}, "gt_finetune": {"[gt_finetune] The answer is 4."},
                        "ground_truth": {"[ground_truth] The answer is 4."}}
    model_ids = {json.loads((folder / f"samples/test_{arm}.jsonl").read_text().splitlines()[0])["model_id"]
                 for arm in answered}
    assert len(model_ids) == 3 and all(m.startswith(f"served:vllm:{tiny_model_dir}") for m in model_ids)
    assert not alive(launch["pid"])
    assert [row["arm"] for row in metrics["rows"]] == ["no_train", "gt_finetune", "ground_truth"]


@needs_data
def test_rpkd_refuses_an_engine_that_cannot_serve_its_adapters_before_training(tiny_model_dir: Path,
                                                                              tmp_path: Path) -> None:
    from bench.__main__ import execute

    config = compose_config(["method=rpkd", "task=gsm8k", "task.limit=2", "method.arms=[no_train,gt_finetune]",
                             *fake_student(tmp_path, tiny_model_dir), "student.server.engine=transformers",
                             *isolated(tmp_path, "refused")])
    with pytest.raises(ValueError, match=r"engine=transformers cannot serve the LoRA adapters"):
        execute(config, progress=False)
    assert launches(tmp_path) == []


def test_a_served_config_composes_from_the_command_line_and_leaves_the_run_identity_alone() -> None:
    from bench.__main__ import config_identity

    plain = compose_config(["student=llama31_8b"])
    served = compose_config(["student=llama31_8b", "student.server.engine=vllm", "student.server.port=8011",
                             "student.server.args=[--tensor-parallel-size,'2']", "teacher.server.engine=vllm"])
    assert config_identity(plain) == config_identity(served)
    assert config_identity(plain) != config_identity(compose_config(["student=llama31_8b", "student.dtype=float16"]))
    example = compose_config(["student=vllm", "teacher=vllm"])
    assert (example.student.server.engine, example.teacher.server.engine) == ("vllm", "vllm")
    assert example.student.backend == "openai" and example.student.server.args[:2] == ["--tensor-parallel-size", "1"]


def test_report_tables_group_runs_alike_however_they_were_served() -> None:
    """The tables group a variant's repeats by config: a run from before `server` existed, and runs whose servers
    differ only in how they serve, are repeats of one variant, not rows of their own."""
    from bench.reporting.runs import _identity

    before = {"method": {"name": "baseline"}, "student": {"name": "s", "backend": "openai"}, "seed": 0}
    served = {**before, "student": {**before["student"], "server": {"engine": "vllm", "args": ["--x"]}},
              "teacher": {"server": {"engine": None}}}
    other = {**served, "student": {**served["student"], "server": {"engine": "vllm", "args": ["--y"]}}}
    assert _identity(before, {}) == _identity(served, {}) == _identity(other, {})
    assert _identity(before, {}) != _identity({**before, "student": {"name": "s", "backend": "hf"}}, {})
