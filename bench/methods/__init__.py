"""Registry of methods: `method=<name>` in Hydra selects one of these classes."""

from __future__ import annotations

from bench.methods.base import Method, MethodResult
from bench.methods.baseline import Baseline
from bench.methods.compare import Compare
from bench.methods.concept_distillation import ConceptDistillation
from bench.methods.onpolicy import OnPolicyDistillation
from bench.methods.response_priming import ResponsePrimingKD

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Baseline, ConceptDistillation, ResponsePrimingKD,
                                                               OnPolicyDistillation, Compare)}


def make_method(config) -> Method:
    if config.name not in METHODS:
        raise ValueError(f"unknown method {config.name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[config.name](config)


__all__ = ["METHODS", "Method", "MethodResult", "make_method"]
