"""Methods by name: `method=<name>` in Hydra selects the class registered (`@register_method`) under that name.

A new method is a module in bench/methods (its class, with `name`, `config_class` and `run`) plus its
conf/method/<name>.yaml; nothing else in bench names it (bench/registry.py finds it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench.methods.base import METHODS, Method, MethodResult, register_method


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def method_config(node: Any) -> Any:
    """A method's config as its typed schema (choice fields as enums), converted once from a config node; a
    dataclass is returned as it is."""
    if dataclasses.is_dataclass(node):
        return node
    if isinstance(node, DictConfig):
        typed = OmegaConf.to_object(node)  # resolved where it stands: `${seed}` refers to the run's seed
        if isinstance(typed, dict):  # a plain node (not composed against the schema): typed by it now
            typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(method_class(node.name).config_class),
                                                        typed))
        return typed
    raise TypeError(f"a method config is a dataclass or a config node, not {type(node).__name__}")


def make_method(config: Any) -> Method:
    """The method `config.name` selects, built from its config (a node of the composed config, or its dataclass)."""
    return method_class(config.name)(method_config(config))


__all__ = ["METHODS", "Method", "MethodResult", "make_method", "method_class", "method_config", "register_method"]
