"""Registry of methods: `method=<name>` in Hydra selects one of these classes.

Each class is imported only when its method runs: RP-KD and on-policy pull in peft and TRL (~3.5 s of imports on
the 2-core box), which a baseline run, or a command refused for a bad value, should not pay.
"""

from __future__ import annotations

from importlib import import_module

from bench.methods.base import Method, MethodResult

METHODS: dict[str, str] = {
    "baseline": "bench.methods.baseline:Baseline",
    "cd": "bench.methods.concept_distillation:ConceptDistillation",
    "rpkd": "bench.methods.response_priming:ResponsePrimingKD",
    "onpolicy": "bench.methods.onpolicy:OnPolicyDistillation",
    "compare": "bench.methods.compare:Compare",
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    module, _, attribute = METHODS[name].partition(":")
    return getattr(import_module(module), attribute)


def make_method(config) -> Method:
    return method_class(config.name)(config)


__all__ = ["METHODS", "Method", "MethodResult", "make_method", "method_class"]
