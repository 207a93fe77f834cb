"""A local server process the harness owns: started, health-checked, and stopped with everything it spawned.

It knows nothing of engines or models (bench/models/engines.py composes the command line): it runs an argv in a
new session, so the server and every worker it forks (vLLM's engine core, tensor-parallel ranks) share one process
group, sends its output to a log file, and polls `GET /v1/models` until the server lists every name it must serve.
Listening is not enough: a model is ready when its name is listed, and the listing also proves that the port
answers for this server, not another one.

Nothing outlives the run, in layers:
- `stop()` (called by the run's `finally`, so on errors and Ctrl-C too) sends SIGTERM to the whole group, waits
  `stop_timeout_s`, then SIGKILLs the group, and only then reaps the leader, so the group id cannot be reused by an
  unrelated process while it is still being signalled;
- an `atexit` hook stops any server still running when the interpreter exits;
- on Linux the server is started with PR_SET_PDEATHSIG, so if the harness itself is killed (SIGKILL, OOM killer)
  the kernel sends the server SIGTERM and it takes its workers down.
A server that exits or does not become ready in time fails with its exit status and the last lines of its log.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
POLL_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 30.0  # vLLM's graceful shutdown of tensor-parallel workers takes seconds, not minutes
KILL_WAIT_S = 10.0
LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local probe never goes through $http_proxy


class ServerStartError(RuntimeError):
    """The server exited, or was not ready in time; the message carries the last lines of its log."""


def free_port(host: str = HOST) -> int:
    """A port nobody listens on now (the OS picks it). Another process could take it before the server binds; the
    server then fails to start and says so, which the health check reports."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"


def _live_members(pgid: int) -> list[int]:
    """The processes of group `pgid` that have not exited yet (a zombie has; it only waits to be reaped). Read from
    Linux's /proc; elsewhere nothing is known and [] is returned."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _wait_until_exited(pgid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := _live_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        logger.warning("processes %s of the server's group were still exiting after SIGKILL", left)


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook asking the kernel to SIGTERM the child when its parent dies (Linux only), resolved here, in
    the parent: the child between fork and exec must not import or load libraries."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the hook ran: the signal will never come
            os._exit(1)

    return hook


_running: set[ManagedServer] = set()
_running_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    """Interpreter exit with servers still up (a caller that never stopped them): stop them, never orphan them."""
    with _running_lock:
        servers = list(_running)
    for server in servers:
        server.stop()


class ManagedServer:
    """One server process. `start()` returns once `GET <base_url>/models` lists every name in `expected_names`."""

    def __init__(self, argv: Sequence[str], port: int, expected_names: Sequence[str], log_path: Path,
                 env: Mapping[str, str] | None = None, startup_timeout_s: float = 600.0,
                 stop_timeout_s: float = STOP_TIMEOUT_S, host: str = HOST, api_key: str | None = None) -> None:
        """`api_key` goes with the health probe, for a server started with one (vLLM's --api-key)."""
        if os.name != "posix":
            raise OSError("managed servers need a POSIX system (process groups); start the server yourself and "
                          "set base_url instead")
        if startup_timeout_s <= 0:
            raise ValueError(f"server.startup_timeout_s must be > 0, got {startup_timeout_s}")
        self.argv = list(argv)
        self.port = port
        self.host = host
        self.expected_names = list(expected_names)
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.api_key = api_key
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._exit_status() is None

    def __enter__(self) -> ManagedServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> str:
        """Launch (unless running) and wait until ready; the base URL. On any failure, Ctrl-C included, the
        process group is stopped before the error propagates."""
        with self._lock:
            if self._process is not None:
                return self.base_url
            if port_in_use(self.port, self.host):
                raise ServerStartError(f"port {self.port} on {self.host} is taken; set server.port=null for a free "
                                       "one, or stop what listens there")
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            logger.info("starting server on %s (log: %s): %s", self.base_url, self.log_path, " ".join(self.argv))
            # PDEATHSIG fires when the starting *thread* exits, so it is only asked for from the main thread
            hook = _parent_death_signal() if threading.current_thread() is threading.main_thread() else None
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                                 stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                                 start_new_session=True, preexec_fn=hook)
            with _running_lock:
                _running.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wait_ready(self) -> None:
        started = time.monotonic()
        deadline = started + self.startup_timeout_s
        while True:
            status = self._exit_status()
            if status is not None:
                raise ServerStartError(f"the server exited with status {status} before it was ready "
                                       f"({' '.join(self.argv)}); last lines of {self.log_path}:\n"
                                       f"{log_tail(self.log_path)}")
            listed, problem = self._listed_names()
            if listed is not None and set(self.expected_names) <= listed:
                logger.info("server ready on %s after %.1f s, serving %s", self.base_url,
                            time.monotonic() - started, ", ".join(self.expected_names))
                return
            if time.monotonic() > deadline:
                missing = sorted(set(self.expected_names) - (listed or set()))
                state = (f"did not answer ({problem})" if listed is None
                         else f"answered but does not list {missing} (it lists {sorted(listed)})")
                raise ServerStartError(f"the server {state} on {self.base_url}/models within "
                                       f"server.startup_timeout_s={self.startup_timeout_s:g}; last lines of "
                                       f"{self.log_path}:\n{log_tail(self.log_path)}")
            time.sleep(POLL_INTERVAL_S)

    def _listed_names(self) -> tuple[set[str] | None, str]:
        """The model ids `GET /v1/models` lists, or None and why not while nothing readable answers."""
        request = urllib.request.Request(f"{self.base_url}/models")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with _DIRECT.open(request, timeout=PROBE_TIMEOUT_S) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            return None, f"HTTP {error.code}"
        except (OSError, ValueError) as error:  # refused, reset, timed out; not JSON
            return None, f"{type(error).__name__}: {error}"
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            return None, "a body without a 'data' list"
        return {str(entry.get("id")) for entry in data if isinstance(entry, dict)}, ""

    def _exit_status(self) -> int | None:
        """The leader's exit status once it has exited, without reaping it: a zombie leader keeps its pid, and so
        the group id, from being reused while stop() still signals the group."""
        assert self._process is not None
        if self._process.returncode is not None:
            return self._process.returncode
        try:
            info = os.waitid(os.P_PID, self._process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere
            return self._process.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL it after stop_timeout_s, then reap. Safe to call twice."""
        with self._lock:
            process = self._process
            if process is None:
                return
            try:
                self._signal_group(signal.SIGTERM)
                deadline = time.monotonic() + self.stop_timeout_s
                while self._exit_status() is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                if self._exit_status() is None:
                    logger.warning("server pid %d ignored SIGTERM for %.0f s: killing its process group",
                                   process.pid, self.stop_timeout_s)
            finally:  # also when a second Ctrl-C cuts the graceful wait short
                # workers can outlive their leader: kill what is left of the group while the zombie leader still
                # holds the group id, then reap the leader
                self._signal_group(signal.SIGKILL)
                _wait_until_exited(process.pid, KILL_WAIT_S)  # a killed process frees its GPU memory as it exits
                process.wait()
                self._process = None
                with _running_lock:
                    _running.discard(self)
            logger.info("server on %s stopped (status %s)", self.base_url, process.returncode)

    def _signal_group(self, signum: int) -> None:
        assert self._process is not None
        try:
            os.killpg(self._process.pid, signum)
        except ProcessLookupError:  # nothing left in the group
            pass
