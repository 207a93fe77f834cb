"""bench/registry.py: the one pattern behind `task=`, `method=` and `student.backend=`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from bench.registry import Registry


def test_a_taken_name_is_refused_naming_both_owners() -> None:
    registry: Registry[type] = Registry("widget", "bench.tasks")

    @registry.register("w")
    class First:
        pass

    registry.register("w")(First)  # the same entry again is harmless (a module imported twice)
    with pytest.raises(ValueError, match=r"widget name 'w' is taken by .*First; .*Second needs another name"):
        @registry.register("w")
        class Second:
            pass


def test_an_unknown_name_lists_the_registered_ones_found_by_discovery() -> None:
    from bench.tasks import TASKS

    with pytest.raises(ValueError, match="unknown task 'mbpp'; available: gsm8k, humaneval, multiarith"):
        TASKS.get("mbpp")


def test_an_entry_registers_under_its_own_name_and_can_be_removed() -> None:
    registry: Registry[type] = Registry("method", "bench.methods")

    @registry.register()
    class Toy:
        name = "toy"

    assert registry.get("toy") is Toy and "toy" in registry
    registry.remove("toy")
    assert "toy" not in registry


def test_every_registry_is_filled_without_importing_torch_or_clients() -> None:
    """Looking names up (the command line does it for every command, and for a refused one) must stay fast: the
    method and backend modules import torch, peft, TRL and openai only in the steps that use them."""
    code = ("import sys\n"
            "from bench.methods import METHODS\nfrom bench.models.backends import BACKENDS\n"
            "from bench.tasks import TASKS\n"
            "print(METHODS.names(), BACKENDS.names(), TASKS.names())\n"
            "print(sorted(m for m in ('torch', 'peft', 'trl', 'transformers', 'openai') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    names, heavy = out.stdout.splitlines()
    assert names == ("['baseline', 'cd', 'compare', 'onpolicy', 'rpkd'] ['hf', 'openai'] "
                     "['gsm8k', 'humaneval', 'multiarith']")
    assert heavy == "[]"


def test_a_misspelt_backend_is_refused_before_any_model_loads() -> None:
    from compose import compose_config

    from bench.__main__ import check_run_config

    with pytest.raises(ValueError, match="student.backend=hff names no registered backend; available: hf, openai"):
        check_run_config(compose_config(["student=tiny", "student.backend=hff"]))
