"""Red-team suite: hostile programs against the real nsjail sandbox.

Each case asserts three things: the attack had no effect outside the sandbox (checked on the host where the
attack aims at the host), the verdict has the right status, and the harness is still healthy afterwards (the
`healthy_after` fixture runs a passing program after every test and checks that nothing was left running).
"""

from __future__ import annotations

import os
import socket
import textwrap
import time
from pathlib import Path

import pytest

import bench
from bench.scoring.code import CodeExecutor
from bench.scoring.sandbox import NsjailSandbox, SandboxLimits
from bench.scoring.verdict import Status

LIMITS = SandboxLimits(wall_time_s=3, cpu_time_s=2, memory_mb=256, max_processes=16, max_output_mb=1,
                       tmp_size_mb=8, max_open_files=32)
LEAK = "ATTACK-SUCCEEDED"
MARKER = "bench-redteam-marker"


@pytest.fixture(scope="module")
def executor() -> CodeExecutor:
    return CodeExecutor(NsjailSandbox(), LIMITS, workers=2)


def _host_processes_with(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.fixture(autouse=True)
def healthy_after(executor: CodeExecutor):
    yield
    deadline = time.monotonic() + 2
    while _host_processes_with(MARKER) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _host_processes_with(MARKER) == [], "a sandboxed process outlived its run"
    assert executor.run("assert sum([1, 2]) == 3").status is Status.PASSED, "harness unhealthy after the attack"


def run(executor: CodeExecutor, program: str):
    return executor.run_with_outcome(textwrap.dedent(program))


# --- network -------------------------------------------------------------------------------------------------

def test_tcp_connect_to_host_loopback_is_blocked(executor):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    verdict, outcome = run(executor, f"""
        import socket
        socket.create_connection(("127.0.0.1", {port}), timeout=1)
        print("{LEAK}")
    """)
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()
    assert LEAK not in outcome.stdout
    assert verdict.status is Status.FAILED and "ConnectionRefusedError" in verdict.detail


def test_internet_connect_is_blocked(executor):
    verdict, outcome = run(executor, f"""
        import socket
        socket.create_connection(("1.1.1.1", 443), timeout=1)
        print("{LEAK}")
    """)
    assert LEAK not in outcome.stdout
    assert verdict.status is Status.FAILED and "unreachable" in verdict.detail


def test_dns_lookup_fails(executor):
    verdict, outcome = run(executor, f"""
        import socket
        socket.getaddrinfo("pypi.org", 443)
        print("{LEAK}")
    """)
    assert LEAK not in outcome.stdout
    assert verdict.status is Status.FAILED and "gaierror" in verdict.detail


def test_udp_to_host_is_not_delivered(executor):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.5)
    port = receiver.getsockname()[1]
    verdict, _ = run(executor, f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"{LEAK}", ("127.0.0.1", {port}))
    """)
    with pytest.raises(socket.timeout):
        receiver.recvfrom(100)
    receiver.close()
    # Inside its own network namespace the datagram goes to the sandbox's own loopback and is dropped there.
    assert verdict.status in (Status.PASSED, Status.FAILED)


# --- filesystem ----------------------------------------------------------------------------------------------

def test_write_to_host_path_has_no_effect(executor, tmp_path):
    target = tmp_path / "pwned.txt"
    verdict, _ = run(executor, f"""
        import os
        os.makedirs("{tmp_path}", exist_ok=True)
        with open("{target}", "w") as f:
            f.write("{LEAK}")
        assert open("{target}").read() == "{LEAK}"
    """)
    # The write can only land in the sandbox's private tmpfs, which is gone after the run.
    assert not target.exists()
    assert verdict.status in (Status.PASSED, Status.FAILED)


def test_system_directories_are_read_only(executor):
    verdict, _ = run(executor, """
        open("/usr/bench-pwned", "w").write("x")
    """)
    assert not Path("/usr/bench-pwned").exists()
    assert verdict.status is Status.FAILED and "Read-only file system" in verdict.detail


def test_program_file_cannot_be_rewritten(executor):
    verdict, _ = run(executor, """
        import sys
        open(__file__, "w").write("print('replaced')")
    """)
    assert verdict.status is Status.FAILED and ("Read-only" in verdict.detail or "Permission" in verdict.detail)


def test_harness_source_tree_is_invisible(executor):
    source = Path(bench.__file__).resolve()
    verdict, outcome = run(executor, f"""
        print(open("{source}").read())
        print("{LEAK}")
    """)
    assert LEAK not in outcome.stdout
    assert verdict.status is Status.FAILED and "FileNotFoundError" in verdict.detail


@pytest.mark.parametrize("path", ["/etc/shadow", "/etc/passwd", "/root/.ssh/id_rsa", "~/.ssh/id_rsa",
                                  "~/.netrc", "~/.cache/huggingface/token"])
def test_secret_files_are_unreadable(executor, path):
    verdict, outcome = run(executor, f"""
        import os
        print(open(os.path.expanduser("{path}")).read())
        print("{LEAK}")
    """)
    assert LEAK not in outcome.stdout
    assert verdict.status is Status.FAILED
    assert "FileNotFoundError" in verdict.detail or "PermissionError" in verdict.detail


def test_disk_fill_is_capped(executor):
    verdict, outcome = run(executor, """
        with open("/tmp/fill", "wb") as f:
            while True:
                f.write(b"x" * (1 << 20))
    """)
    assert verdict.status is Status.FAILED
    assert "No space left" in verdict.detail or "File too large" in verdict.detail


# --- secrets in the environment ------------------------------------------------------------------------------

def test_environment_has_no_parent_secrets(executor, monkeypatch):
    secrets = {"OPENAI_API_KEY": "sk-redteam-1", "WANDB_API_KEY": "wandb-redteam-2", "HF_TOKEN": "hf-redteam-3"}
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    verdict, outcome = run(executor, """
        import os
        print(dict(os.environ))
        assert not any(k in os.environ for k in ("OPENAI_API_KEY", "WANDB_API_KEY", "HF_TOKEN"))
    """)
    assert not any(value in outcome.stdout for value in secrets.values())
    assert verdict.status is Status.PASSED


def test_proc_environ_scan_finds_no_secret(executor, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-redteam-proc")
    verdict, outcome = run(executor, f"""
        import os
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if b"sk-redteam-proc" in open(f"/proc/{{pid}}/environ", "rb").read():
                        print("{LEAK}")
                except OSError:
                    pass
        assert len([p for p in os.listdir("/proc") if p.isdigit()]) <= 2  # only the sandbox's own processes
    """)
    assert LEAK not in outcome.stdout
    assert verdict.status is Status.PASSED


# --- processes and resources ---------------------------------------------------------------------------------

def test_fork_bomb_is_contained(executor):
    verdict, _ = run(executor, """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    assert verdict.status in (Status.TIMEOUT, Status.FAILED, Status.MEMORY)


def test_thread_bomb_is_contained(executor):
    verdict, _ = run(executor, """
        import threading, time
        threads = []
        while True:
            t = threading.Thread(target=time.sleep, args=(100,))
            t.start()
            threads.append(t)
    """)
    assert verdict.status in (Status.FAILED, Status.MEMORY)
    assert "can't start new thread" in verdict.detail or "Memory" in verdict.detail


def test_single_huge_allocation(executor):
    verdict, _ = run(executor, "x = bytearray(2 * 1024 ** 3)")
    assert verdict.status is Status.MEMORY


def test_gradual_memory_growth(executor):
    verdict, _ = run(executor, """
        chunks = []
        while True:
            chunks.append(bytearray(16 * 1024 * 1024))
    """)
    assert verdict.status is Status.MEMORY


def test_memory_hog_spread_over_children(executor):
    # Each child stays under the per-process address-space cap; together they exceed the cgroup limit.
    verdict, _ = run(executor, """
        import os, time
        for _ in range(6):
            if os.fork() == 0:
                block = bytearray(200 * 1024 * 1024)
                time.sleep(30)
                os._exit(0)
        time.sleep(30)
    """)
    assert verdict.status in (Status.MEMORY, Status.TIMEOUT)


def test_infinite_loop_times_out(executor):
    verdict, outcome = run(executor, "while True:\n    pass\n")
    assert verdict.status is Status.TIMEOUT
    assert outcome.wall_time_s < LIMITS.wall_time_s + 2


def test_sleep_forever_times_out_on_wall_clock(executor):
    verdict, outcome = run(executor, "import time\ntime.sleep(10_000)\n")
    assert verdict.status is Status.TIMEOUT
    assert outcome.wall_time_s < LIMITS.wall_time_s + 2


def test_daemonized_child_does_not_outlive_the_run(executor):
    verdict, _ = run(executor, f"""
        import os, sys
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(1000)", "{MARKER}"])
        assert True
    """)
    assert verdict.status is Status.PASSED  # the parent finished; the fixture checks the grandchild is gone


def test_killing_parent_and_group_spares_the_host(executor):
    verdict, _ = run(executor, """
        import os, signal
        for target in (os.getppid(), 0, -1):
            try:
                if target == 0:
                    os.killpg(0, signal.SIGKILL)
                else:
                    os.kill(target, signal.SIGKILL)
            except OSError:
                pass
        raise AssertionError("still alive")
    """)
    assert verdict.status in (Status.FAILED, Status.MEMORY)


def test_stdout_flood_is_cut(executor):
    verdict, outcome = run(executor, """
        while True:
            print("x" * 65536)
    """)
    assert verdict.status is Status.CRASHED and "output limit" in verdict.detail
    assert len(outcome.stdout) <= LIMITS.max_output_mb * 1024 * 1024


def test_stderr_flood_is_cut(executor):
    verdict, outcome = run(executor, """
        import sys
        while True:
            sys.stderr.write("e" * 65536)
    """)
    assert verdict.status in (Status.CRASHED, Status.FAILED)
    assert len(outcome.stderr) <= LIMITS.max_output_mb * 1024 * 1024


def test_fd_exhaustion(executor):
    verdict, _ = run(executor, """
        handles = [open("/dev/null") for _ in range(100_000)]
    """)
    assert verdict.status is Status.FAILED and "Too many open files" in verdict.detail


def test_self_signals_cannot_kill_the_runner(executor):
    # The runner is init of the sandbox's pid namespace: signals sent from inside are ignored, so the program
    # cannot make the runner vanish without a verdict.
    verdict, _ = run(executor, """
        import os, signal
        for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGSTOP):
            os.kill(os.getpid(), sig)
        raise AssertionError("runner survived")
    """)
    assert verdict.status is Status.FAILED and "runner survived" in verdict.detail


def test_stopped_child_is_ended_by_the_wall_clock(executor):
    verdict, outcome = run(executor, """
        import os, signal
        pid = os.fork()
        if pid == 0:
            os.kill(os.getpid(), signal.SIGSTOP)
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    assert verdict.status is Status.TIMEOUT
    assert outcome.wall_time_s < LIMITS.wall_time_s + 2


def test_ctypes_segfault(executor):
    verdict, _ = run(executor, "import ctypes\nctypes.string_at(0)\n")
    assert verdict.status is Status.CRASHED and "SIGSEGV" in verdict.detail


def test_privilege_escalation_fails(executor):
    verdict, _ = run(executor, """
        import os
        os.setuid(0)
    """)
    assert verdict.status is Status.FAILED and "PermissionError" in verdict.detail


def test_shelling_out_cannot_reach_host(executor, tmp_path):
    target = tmp_path / "via-shell"
    verdict, _ = run(executor, f"""
        import os, subprocess
        os.system("echo {LEAK} > {target}")
        subprocess.run(["sh", "-c", "echo {LEAK} > {target}"])
        subprocess.run(["sh", "-c", "cat /etc/shadow; ls /work"])
    """)
    assert not target.exists()
    assert verdict.status in (Status.PASSED, Status.FAILED)


# --- tampering with the verdict ------------------------------------------------------------------------------

def test_os_exit_zero_before_tests_is_not_a_pass(executor):
    verdict, _ = run(executor, """
        import os
        os._exit(0)
        assert False
    """)
    assert verdict.status is Status.FAILED


def test_sys_exit_zero_before_tests_is_not_a_pass(executor):
    verdict, _ = run(executor, """
        import sys
        sys.exit(0)
        assert False
    """)
    assert verdict.status is Status.FAILED


def test_printing_a_fake_report_is_not_a_pass(executor):
    verdict, _ = run(executor, """
        import json, os, sys
        sys.stdin.read()  # the nonce was consumed by the runner and stdin now reads /dev/null
        print("passed")
        print("0" * 32 + " " + json.dumps({"status": "passed"}))
        os._exit(0)
    """)
    assert verdict.status is Status.FAILED


def test_atexit_hook_cannot_turn_a_failure_into_a_pass(executor):
    verdict, _ = run(executor, """
        import atexit, os
        atexit.register(lambda: os._exit(0))
        assert 1 == 2
    """)
    assert verdict.status is Status.FAILED


def test_silencing_stdout_cannot_hide_the_report(executor):
    verdict, _ = run(executor, """
        import sys
        sys.stdout = None
        assert 1 == 1
    """)
    assert verdict.status is Status.PASSED


def test_concurrent_attacks_do_not_interfere(executor):
    programs = ["while True:\n    pass\n", "x = bytearray(2 * 1024 ** 3)", "assert True", "import os\nos._exit(0)"]
    verdicts = executor.run_many(programs)
    assert [v.status for v in verdicts] == [Status.TIMEOUT, Status.MEMORY, Status.PASSED, Status.FAILED]
