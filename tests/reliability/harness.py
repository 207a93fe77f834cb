"""Shared pieces of the reliability suite: the real CLI in a subprocess, a tiny local GSM8K, a counting proxy in
front of a real OpenAI-compatible server, and comparisons of two run folders that ignore only timings.

Kept in a plain module rather than a conftest.py so each test file imports exactly what it uses, and so other
reliability tests (the fault server's) can share it without fixtures appearing in every module.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]

# Keys whose values are measurements of time or of where a run happened to read its answers from (the generation
# cache), not results: a resumed run legitimately differs in them. Everything else must match exactly.
VOLATILE_KEYS = frozenset({"started", "wall_s", "environment", "latency_s", "generation_s", "scoring_s", "cached",
                           "train_s", "eval_s", "resumed_from_step"})
# peft writes these from a Python set: their order changes with the process's string hashing, their meaning not.
SET_KEYS = {"adapter_config.json": ("target_modules",)}
# config.yaml records where the run wrote its files; every other key of it is compared.
WHERE_KEYS = ("results_dir", "cache")


# ------------------------------------------------------------------------------------------------ data
def write_tiny_gsm8k(root: Path, train: int = 24, test: int = 12) -> Path:
    """A GSM8K-format local data folder (`gsm8k/{train,test}.jsonl`) for `task.local_dir`: tests must not depend on
    the shared copy of the real data, which CI machines may lack. Returns `root`."""
    folder = root / "gsm8k"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count, offset in (("train", train, 0), ("test", test, 100)):
        lines = []
        for index in range(count):
            a, b = index + offset + 2, 3 * index + 1
            lines.append(json.dumps({
                "question": f"Ana has {a} pencils and buys {b} more. How many pencils does she have now?",
                "answer": f"She has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} pencils.\n#### {a + b}"}))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


# ------------------------------------------------------------------------------------------------ the CLI
def bench_env(**extra: str) -> dict[str, str]:
    """The environment of a `python -m bench` child: this checkout's code, no hub, no W&B, one math thread (the
    same reductions in every run, and polite on a shared 2-core machine)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def bench_argv(overrides: Iterable[str]) -> list[str]:
    return [sys.executable, "-m", "bench", *overrides]


def run_bench(overrides: Iterable[str], env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """One CLI run to its end (whatever its exit status); the caller asserts on it."""
    return subprocess.run(bench_argv(overrides), capture_output=True, text=True, cwd=REPO, env=env or bench_env(),
                          timeout=timeout)


def start_bench(overrides: Iterable[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A CLI run in the background, its output in `log` (a pipe nobody reads would block the child)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stream:
        return subprocess.Popen(bench_argv(overrides), stdout=stream, stderr=subprocess.STDOUT, cwd=REPO,
                                env=env or bench_env())


def log_tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, log: Path, what: str,
             timeout: float = 240, poll_s: float = 0.01) -> None:
    """Poll `condition` until it holds; fail if the process ends first (it never reached the point) or on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before {what}:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}:\n{log_tail(log)}")
        time.sleep(poll_s)


def kill_hard(process: subprocess.Popen) -> None:
    """SIGKILL, as an out-of-memory killer or a preempted node does: no handler, no cleanup runs."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, process.returncode


def finished(process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    process.wait(timeout=timeout)
    assert process.returncode == 0, f"run failed ({process.returncode}):\n{log_tail(log)}"


def run_folder(results_dir: Path, experiment: str) -> Path:
    """The single run folder a command made under results_dir/<experiment>/ (Hydra's own logs aside)."""
    folders = [p for p in (results_dir / experiment).iterdir() if p.is_dir() and not p.name.startswith("_")]
    assert len(folders) == 1, folders
    return folders[0]


# ------------------------------------------------------------------------------------------------ the proxy
@dataclass
class Exchange:
    """One request through the proxy: which run sent it (its API key), its body, and whether its reply was
    written to the client in full."""

    run: str
    body: str
    delivered: bool = False
    held: bool = False


class CountingProxy:
    """A threaded HTTP proxy on 127.0.0.1 between the harness and a real OpenAI-compatible server.

    Each request is forwarded unchanged and recorded (canonical JSON body, and the run that sent it, told apart by
    the bearer key each run is given in OPENAI_API_KEY: the key is not part of a run's config, so runs through one
    proxy share their config and cache keys). `hold(run, after)` lets that run's first `after` replies through and
    holds every later one unanswered, which freezes the run at a known point for a kill: exactly `after` replies
    delivered, the rest in flight. `rewrite` may reframe a reply's text (the tiny random teacher writes noise; CD
    needs its RULES format); the requests, their number and their order stay the harness's own.
    """

    def __init__(self, upstream: str, rewrite: Callable[[str], str] | None = None) -> None:
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.rewrite = rewrite
        self.exchanges: list[Exchange] = []
        self._holds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}{parsed.path}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def hold(self, run: str, after: int) -> None:
        self._holds[run] = after

    def of(self, run: str) -> list[Exchange]:
        with self._lock:
            return [e for e in self.exchanges if e.run == run]

    def holding(self, run: str) -> bool:
        """The run got its `after` replies and at least one more request is held."""
        exchanges = self.of(run)
        return (sum(e.delivered for e in exchanges) >= self._holds.get(run, 0)
                and any(e.held for e in exchanges))

    def _admit(self, exchange: Exchange) -> bool:
        """Whether this reply may be delivered now (under the run's hold, only its first `after` replies are)."""
        with self._lock:
            limit = self._holds.get(exchange.run)
            delivered = sum(e.delivered for e in self.exchanges if e.run == exchange.run)
            if limit is not None and delivered >= limit:
                exchange.held = True
                return False
            exchange.delivered = True  # counted before writing, so a parallel reply cannot slip past the limit
            return True

    def _forward(self, method: str, path: str, body: bytes | None) -> tuple[int, str, bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=600)
        try:
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type", "application/json"), response.read()
        finally:
            connection.close()

    def _reframed(self, data: bytes) -> bytes:
        if self.rewrite is None:
            return data
        reply = json.loads(data)
        for choice in reply.get("choices", []):
            choice["message"]["content"] = self.rewrite(choice["message"].get("content") or "")
        return json.dumps(reply).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, kind, data = proxy._forward("GET", self.path, None)
                self._reply(status, kind, data)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                run = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
                exchange = Exchange(run=run, body=json.dumps(json.loads(raw), sort_keys=True))
                with proxy._lock:
                    proxy.exchanges.append(exchange)
                status, kind, data = proxy._forward("POST", self.path, raw)
                if status == 200:
                    data = proxy._reframed(data)
                if not proxy._admit(exchange):
                    proxy._released.wait()  # never answered: its client is killed meanwhile
                    return
                try:
                    self._reply(status, kind, data)
                except OSError:  # the client went away first: it never had this reply
                    exchange.delivered = False
                    raise

            def _reply(self, status: int, kind: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

        return Handler


# ------------------------------------------------------------------------------------------------ comparisons
def comparable(value: Any) -> Any:
    """`value` without its VOLATILE_KEYS, at any depth."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def _as_sets(value: Any, keys: Iterable[str]) -> Any:
    """`value` with the lists under `keys` (top level) sorted: they are sets written in arbitrary order."""
    if not isinstance(value, dict):
        return value
    return {k: sorted(v) if k in keys and isinstance(v, list) else v for k, v in value.items()}


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tensors_equal(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    import numpy as np

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):  # numpy's saved RNG state holds one
        return type(a) is type(b) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_tensors_equal(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dict__") and type(a) is type(b):
        return _tensors_equal(vars(a), vars(b))
    return a == b


def file_difference(a: Path, b: Path) -> str | None:
    """None when two result files say the same (timings aside; tensors bit for bit), else how they differ."""
    suffix = a.suffix
    if suffix in (".json", ".done"):  # phases/<name>.done markers hold a JSON summary
        left, right = (_as_sets(comparable(json.loads(p.read_text())), SET_KEYS.get(a.name, ())) for p in (a, b))
    elif suffix == ".jsonl":
        left, right = comparable(read_jsonl(a)), comparable(read_jsonl(b))
    elif a.name == "config.yaml":
        import yaml

        left, right = ({k: v for k, v in yaml.safe_load(p.read_text()).items() if k not in WHERE_KEYS}
                       for p in (a, b))
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        return None if _tensors_equal(load_file(a), load_file(b)) else "tensors differ"
    elif suffix in (".pt", ".pth", ".bin"):
        import torch

        same = _tensors_equal(torch.load(a, weights_only=False), torch.load(b, weights_only=False))
        return None if same else "saved objects differ"
    else:
        return None if a.read_bytes() == b.read_bytes() else "bytes differ"
    return None if left == right else _first_difference(left, right)


def _first_difference(left: Any, right: Any, where: str = "") -> str:
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right), key=str):
            if left.get(key, "<absent>") != right.get(key, "<absent>"):
                return _first_difference(left.get(key, "<absent>"), right.get(key, "<absent>"), f"{where}.{key}")
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        for index, (x, y) in enumerate(zip(left, right)):
            if x != y:
                return _first_difference(x, y, f"{where}[{index}]")
    if isinstance(left, list) and isinstance(right, list):
        return f"{where or 'value'}: {len(left)} rows vs {len(right)} rows"
    return f"{where or 'value'}: {str(left)[:300]!r} vs {str(right)[:300]!r}"


def result_files(folder: Path, skip: Callable[[Path], bool] = lambda _: False) -> list[Path]:
    """Every file of a run folder, relative to it, but hidden temp files and what `skip` rules out."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith(".") and not skip(p.relative_to(folder)))


def folder_differences(expected: Path, actual: Path, files: Iterable[Path]) -> list[str]:
    """How `actual`'s copies of `files` differ from `expected`'s, one line per file."""
    problems = []
    for relative in files:
        if not (actual / relative).exists():
            problems.append(f"{relative}: missing")
            continue
        difference = file_difference(expected / relative, actual / relative)
        if difference:
            problems.append(f"{relative}: {difference}")
    return problems
