"""Whether a code verdict depends on how many sandboxes run beside it, before and after the fix, in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/sandbox_load.py [--programs 16] [--cpu-s 2.8] [--timeout-s 10]
                                                             [--workers 2,8] [--sandbox nsjail]

N copies of one correct program that does a fixed amount of work, calibrated on this machine to take about
`--cpu-s` seconds of CPU when it runs alone, go through the code executor at each worker count under two policies:

  before: the wall limit is the timeout (and the CPU limit its ceiling), whatever the pool's size; emulated with
          `CodeExecutor(scale_wall_to_load=False)` and `SandboxLimits(wall_time_s=timeout, cpu_time_s=timeout)`.
  after:  what `code_checker` builds from `scoring.*`: the timeout is a CPU budget, and the wall limit is
          timeout x 3 (DEFAULT_WALL_MULTIPLE) x max(1, workers / CPUs), a safety net for programs that sleep or block.

Every program is correct and needs the same CPU time, so any timeout is the load's doing, not the program's. The
table gives, per policy and worker count, the timeouts (CPU budget spent / wall limit hit), the median CPU and wall
seconds per program, and the whole run's wall time. Others' work on the machine adds load: the load average is
printed at the start and the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench.config import ScoringConfig
from bench.scoring.code import code_checker
from bench.scoring.code import CodeExecutor, available_cpus
from bench.scoring.sandbox import ProcessOutcome, SandboxLimits, TimeoutKind, make_sandbox
from bench.scoring.verdict import Status, Verdict

# The work: pure-Python integer arithmetic, the shape of a slow-but-correct HumanEval solution.
WORK = "def work(n):\n    total = 0\n    for i in range(n):\n        total += i * i % 7\n    return total\n"
CALIBRATION_ITERATIONS = 2_000_000


@dataclass(frozen=True)
class Row:
    """One (policy, workers) setting's results."""

    policy: str
    workers: int
    wall_limit_s: float
    verdicts: list[Verdict]
    outcomes: list[ProcessOutcome]
    elapsed_s: float

    def timeouts(self, kind: TimeoutKind) -> int:
        return sum(outcome.timeout is kind for outcome in self.outcomes)

    def format(self) -> str:
        passed = sum(v.status is Status.PASSED for v in self.verdicts)
        cpu, wall = self.timeouts(TimeoutKind.CPU), self.timeouts(TimeoutKind.WALL)
        median_cpu = statistics.median(o.cpu_time_s for o in self.outcomes)
        median_wall = statistics.median(o.wall_time_s for o in self.outcomes)
        n = len(self.verdicts)
        timeouts = f"{cpu + wall}/{n} ({cpu} cpu, {wall} wall)"
        return (f"  {self.policy:<6}  {self.workers:>7}  {self.wall_limit_s:>10.1f}  {f'{passed}/{n}':>7}  "
                f"{timeouts:<23}  {median_cpu:>10.2f}  {median_wall:>11.2f}  {self.elapsed_s:>7.1f}")


def iterations_for(cpu_s: float) -> int:
    """Loop iterations that take `cpu_s` of CPU here, timed in this process (the sandbox runs the same interpreter)."""
    namespace: dict = {}
    exec(WORK, namespace)  # noqa: S102 - our own constant, timed for calibration
    namespace["work"](CALIBRATION_ITERATIONS // 10)  # warm up
    started = time.process_time()
    namespace["work"](CALIBRATION_ITERATIONS)
    per_iteration = (time.process_time() - started) / CALIBRATION_ITERATIONS
    return max(1, round(cpu_s / per_iteration))


def program(iterations: int) -> str:
    return f"{WORK}\nassert work({iterations}) >= 0\n"


def executor_for(policy: str, sandbox: str, timeout_s: float, workers: int) -> CodeExecutor:
    """The executor each policy gives at this worker count."""
    if policy == "before":
        limits = SandboxLimits(wall_time_s=timeout_s, cpu_time_s=timeout_s)
        return CodeExecutor(make_sandbox(sandbox), limits, workers=workers, scale_wall_to_load=False)
    return code_checker(ScoringConfig(sandbox=sandbox, timeout_s=timeout_s, workers=workers)).executor


def run_setting(executor: CodeExecutor, policy: str, programs: list[str]) -> Row:
    """Run every program at the executor's worker count, keeping the raw outcomes for the timeout kinds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=executor.workers) as pool:
        results = list(pool.map(executor.run_with_outcome, programs))
    elapsed = time.perf_counter() - started
    return Row(policy, executor.workers, executor.run_limits().wall_time_s, [v for v, _ in results],
               [o for _, o in results], elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=16, help="copies of the program per setting")
    parser.add_argument("--cpu-s", type=float, default=2.8, help="CPU seconds each program needs alone")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="scoring.timeout_s")
    parser.add_argument("--workers", default="2,8", help="comma-separated worker counts")
    parser.add_argument("--sandbox", default="nsjail", choices=["nsjail", "none"])
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]

    iterations = iterations_for(args.cpu_s)
    programs = [program(iterations)] * args.programs
    print(f"machine: {available_cpus()} CPUs, load average {os.getloadavg()[0]:.2f}; sandbox: {args.sandbox}")
    print(f"{args.programs} copies of a correct program needing ~{args.cpu_s:g} s of CPU alone "
          f"({iterations:,} loop iterations), scoring.timeout_s={args.timeout_s:g}")
    print(f"  {'policy':<6}  {'workers':>7}  {'wall limit':>10}  {'passed':>7}  {'timeouts':<23}  "
          f"{'median CPU':>10}  {'median wall':>11}  {'total s':>7}")
    for policy in ("before", "after"):
        for workers in worker_counts:
            executor = executor_for(policy, args.sandbox, args.timeout_s, workers)
            print(run_setting(executor, policy, programs).format(), flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
