"""Model backends by name: `student.backend=<name>` (and `teacher.backend`) selects the factory registered here.

A backend is one module in this package whose factory, decorated with `@register_backend("<name>")`, turns a
`ModelConfig` into a `ChatModel` (bench/models/base.py). The modules stay light: each imports its heavy library
(torch, openai) inside the factory, so looking a backend up, or refusing an unknown one, costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bench.registry import Registry

if TYPE_CHECKING:
    from bench.config import ModelConfig
    from bench.models.base import ChatModel

BackendFactory = Callable[["ModelConfig"], "ChatModel"]

BACKENDS: Registry[BackendFactory] = Registry("backend", "bench.models.backends")
register_backend = BACKENDS.register

__all__ = ["BACKENDS", "BackendFactory", "register_backend"]
