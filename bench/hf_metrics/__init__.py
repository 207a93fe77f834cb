"""bench's two scorers as Hugging Face `evaluate` metric modules, for users of that ecosystem.

    import evaluate
    from bench.hf_metrics import module_path
    math_metric = evaluate.load(module_path("bench_math"))
    math_metric.compute(predictions=["... The answer is 18."], references=["18"])
    code_metric = evaluate.load(module_path("bench_humaneval"))
    code_metric.compute(predictions=[[candidate, ...]], references=[{"prompt": ..., "test": ..., "entry_point": ...}],
                        k=[1, 10])

They are thin: each calls the same `bench.scoring` code that scores the harness's own runs (the nsjail sandbox for
code), so a number computed through `evaluate` equals one computed by `python -m bench` on the same outputs. This is
why `evaluate` is a dependency: these modules are its only use.
"""

from __future__ import annotations

from pathlib import Path

MODULES = ("bench_math", "bench_humaneval")


def module_path(name: str) -> str:
    """The folder `evaluate.load` takes for one of bench's metric modules."""
    if name not in MODULES:
        raise ValueError(f"unknown bench metric {name!r}; expected one of {MODULES}")
    return str(Path(__file__).resolve().parent / name)
