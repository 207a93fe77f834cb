"""Shared fixtures: offline by default, a tiny model folder, and a real OpenAI-compatible server on localhost."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# The hub is unreachable on CI machines; without this every dataset load pays ~25 s of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _use_the_runs_data_dir() -> None:
    """The task data folder a `bench` run gets from conf/config.yaml (hydra.job.env_set), for the tests that call
    the library directly (configs composed in-process, as tests/compose.py does, never get Hydra's job
    environment); only where the environment sets none and the folder exists."""
    from bench.config import job_environment

    data_dir = job_environment()["BENCH_DATA_DIR"]
    if "BENCH_DATA_DIR" not in os.environ and Path(data_dir).is_dir():
        os.environ["BENCH_DATA_DIR"] = data_dir


_use_the_runs_data_dir()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama + SmolLM2 tokenizer saved as a normal transformers folder."""
    from bench.models.embedded import build_tiny_llama

    folder = tmp_path_factory.mktemp("tiny-llama")
    model, tokenizer = build_tiny_llama(seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def openai_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`transformers serve` on a free localhost port serving the tiny model: (base_url, model name)."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    executable = Path(sys.executable).with_name("transformers")
    with log.open("w") as stream:
        server = subprocess.Popen([str(executable), "serve", str(tiny_model_dir), "--host", "127.0.0.1",
                                   "--port", str(port)], stdout=stream, stderr=subprocess.STDOUT,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"transformers serve did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        yield base_url, str(tiny_model_dir)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
