"""Sandbox backends: start-up checks, error reporting and the explicit unsandboxed opt-out."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bench.scoring.code import CodeExecutor
from bench.scoring.sandbox import (NsjailSandbox, SandboxLimits, SandboxUnavailable, UnsandboxedSandbox,
                                   make_sandbox)
from bench.scoring.verdict import Status


def test_make_sandbox_rejects_unknown_names():
    with pytest.raises(ValueError, match="'none' runs generated code unsandboxed"):
        make_sandbox("docker")


def test_nsjail_describes_its_isolation():
    description = make_sandbox("nsjail").describe()
    assert description.startswith("nsjail")
    assert "tmpfs /tmp" in description and "empty environment" in description


def test_nsjail_command_requests_full_isolation(tmp_path):
    sandbox = NsjailSandbox()
    argv = sandbox.command(tmp_path, tmp_path / "log", "pass", SandboxLimits(wall_time_s=2.5, memory_mb=300))
    assert "--disable_clone_newnet" not in argv and "--keep_env" not in argv
    assert argv[argv.index("--time_limit") + 1] == "3"
    assert argv[argv.index("--rlimit_as") + 1] == "300"
    assert f"{tmp_path}:/sandbox" in argv
    assert not any(str(Path.home()) == arg for arg in argv), "the home directory must never be mounted"


def test_a_host_where_nsjail_cannot_start_fails_at_construction(tmp_path):
    with pytest.raises(SandboxUnavailable, match="scoring.sandbox=none"):
        NsjailSandbox(interpreter=tmp_path / "no-such-python")


def test_sandbox_failure_mid_run_is_a_sandbox_error_not_a_pass(tmp_path):
    sandbox = NsjailSandbox()
    sandbox.interpreter = tmp_path / "vanished-python"  # the interpreter disappears after start-up
    verdict = CodeExecutor(sandbox).run("assert True")
    assert verdict.status is Status.SANDBOX_ERROR
    assert verdict.detail


@pytest.mark.parametrize("field", ["wall_time_s", "memory_mb", "max_processes"])
def test_limits_must_be_positive(field):
    with pytest.raises(ValueError, match=field):
        SandboxLimits(**{field: 0})


def test_unsandboxed_opt_out_warns_on_every_run(caplog):
    with caplog.at_level(logging.WARNING, logger="bench.scoring.sandbox"):
        executor = CodeExecutor(UnsandboxedSandbox(), SandboxLimits(wall_time_s=2, cpu_time_s=2, memory_mb=256))
        verdicts = executor.run_many(["assert True", "assert False", "while True:\n    pass\n"])
    assert [v.status for v in verdicts] == [Status.PASSED, Status.FAILED, Status.TIMEOUT]
    warnings = [r for r in caplog.records if "UNSANDBOXED" in r.getMessage()]
    assert len(warnings) >= 1 + len(verdicts)


def test_unsandboxed_still_scrubs_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    verdict = CodeExecutor(UnsandboxedSandbox()).run("import os\nassert 'OPENAI_API_KEY' not in os.environ")
    assert verdict.status is Status.PASSED


# Defect: mmap beyond the memory cap raises OSError(ENOMEM), which was reported as an ordinary failure.
@pytest.mark.parametrize("program", [
    "import mmap\nmmap.mmap(-1, 4 << 30)\n",
    "import mmap\nm = mmap.mmap(-1, 4 << 30)\nm[0] = 1\n",
])
def test_mmap_beyond_memory_cap_is_memory(program):
    executor = CodeExecutor(NsjailSandbox(), SandboxLimits(wall_time_s=5, cpu_time_s=5, memory_mb=256))
    verdict = executor.run(program)
    assert verdict.status is Status.MEMORY
    assert "ENOMEM" in verdict.detail or "Cannot allocate memory" in verdict.detail


def test_other_os_errors_still_fail():
    executor = CodeExecutor(NsjailSandbox(), SandboxLimits(wall_time_s=5, cpu_time_s=5))
    verdict = executor.run("open('/no/such/file')\n")
    assert verdict.status is Status.FAILED and "FileNotFoundError" in verdict.detail
