"""What names a run: the hash of its config without the settings that change where or how it is computed.

The results folder is named by this hash, so re-running a command resumes it and any change of substance starts
afresh. The report groups repeated runs (seeds) by the same settings, so both read the lists here.
"""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

# Keys that change where or how a run is logged but not what it computes: excluded from the run's identity.
NOT_IDENTITY = ("logger", "run_name", "resume", "results_dir", "experiment", "cache")
# Nested keys that change how a result is computed (engine, launcher, parallelism) but not what: excluded too, so
# adding such a setting does not rename (and stop resuming) every earlier run's folder. Dotted paths; a path under
# `student.`/`teacher.` applies to both roles' model configs.
NOT_IDENTITY_PATHS: tuple[str, ...] = (
    "student.generation_engine",  # eager or static+compiled decoding (bench/models/hf.py)
    "student.server",  # a managed server (bench/models/served.py)
    "student.device_map",  # sharded loading for inference (accelerate's placement)
)


def without_paths(tree: dict, paths: tuple[str, ...]) -> dict:
    tree = dict(tree)
    for path in paths:
        head, _, rest = path.partition(".")
        if head in tree and rest and isinstance(tree[head], dict):
            tree[head] = without_paths(tree[head], (rest,))
        elif head in tree and not rest:
            del tree[head]
    return tree


def identity_paths() -> tuple[str, ...]:
    """NOT_IDENTITY_PATHS with each model path given for both roles, each path once."""
    model_paths = [p.partition(".")[2] for p in NOT_IDENTITY_PATHS if p.startswith(("student.", "teacher."))]
    both = (f"{role}.{p}" for p in model_paths for role in ("student", "teacher"))
    return tuple(dict.fromkeys((*NOT_IDENTITY_PATHS, *both)))


def config_identity(config: DictConfig) -> str:
    resolved = OmegaConf.to_container(config, resolve=True)
    assert isinstance(resolved, dict)
    identity = without_paths({key: value for key, value in resolved.items() if key not in NOT_IDENTITY},
                              identity_paths())
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
