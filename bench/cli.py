"""The command line's own syntax on top of Hydra's: method options by method name, and the checks every job's config
passes at composition (before any model is loaded, any teacher call paid for, or any results folder made).

Method options. `cd.<key>=...`, `rpkd.<key>=...`, `onpolicy.<key>=...` (any registered method's name but
`compare`) are the spelling the papers' users reach for, and the only one that can set a method's options in a grid over methods: `method.train_limit=8` would be
applied to every job, and the baseline's schema has no `train_limit`. So a shorthand is an option of the method it
names, not of whichever method a job runs:

* On the command line it becomes `++rpkd.<key>=...`: a top-level option dict, wherever the override stands (before
  or after `-m`, `--cfg job`, ...). Without any `method=` or preset, it also selects its method.
* Each job's composed config then moves that dict into the method it configures (`prepare_job_config`):
  `config.method` when the job runs that method, `config.method.<name>` when it runs `compare` (whose sub-runs
  have the same options), and drops it otherwise -- only in a grid over methods (a command sweeping `method=` or
  `+experiments=`); elsewhere options for a method that does not run are an error. The options are validated
  against the method's schema first, so a misspelt key fails at once, named, in every job.

The merged config is exactly what `method.<key>=...` would have composed: the same config.yaml, the same run
identity (results folder), and what `--cfg job` prints.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from bench.config import CONF_DIR
from bench.methods import METHODS, method_class

logger = logging.getLogger("bench")

COMPARE = "compare"  # the study whose sub-runs take the options of each method under method.<name>
PRESETS_DIR = CONF_DIR / "experiments"


def method_options() -> tuple[str, ...]:
    """The shorthand prefixes: every registered method's name but the study's (its options are its methods')."""
    return tuple(name for name in METHODS.names() if name != COMPARE)


@functools.cache
def _shorthand(options: tuple[str, ...]) -> re.Pattern[str]:
    """`<method>.<key>=...` with Hydra's `+`/`++`/`~` prefixes; a deletion (`~cd.key`) may have no value."""
    return re.compile(r"^(?P<prefix>[+~]*)(?P<family>" + "|".join(map(re.escape, options))
                      + r")\.(?P<key>[^=]+)(?P<eq>=?)")
# Top-level keys of a job's config that are not run settings: Hydra's own node, while a job is composed.
_HYDRA_KEYS = frozenset({"hydra"})


class ConfigError(ValueError):
    """A composed config no run can use; raised before any work."""


def check_preset_spelling(overrides: Sequence[str]) -> None:
    """`experiment=<preset>` only names the results folder, so it would silently run the default method: when the
    name is a preset and no `+experiments=` loads one, stop and say how to load it."""
    if any(o.lstrip("+~").startswith("experiments=") for o in overrides):
        return
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key == "experiment" and (PRESETS_DIR / f"{value}.yaml").is_file():
            raise SystemExit(f"error: `experiment={value}` only names the results folder; to run the preset, write "
                             f"`+experiments={value}` (it sets experiment={value} itself)")


def expand_method_shorthand(args: Sequence[str]) -> list[str]:
    """Command-line arguments with each `<method>.<key>=v` written as the option `++<method>.<key>=v`, in place.

    Flags keep their places (argparse wants the overrides together, so a `method=` this adds goes right before the
    first shorthand). Contradictions fail before any work: options only for methods no `method=` value names, or
    options for several methods with nothing saying which runs."""
    expanded: list[str] = []
    families: list[str] = []
    first = None
    shorthand = _shorthand(method_options())
    for arg in args:
        match = shorthand.match(arg)
        if match is None or arg.startswith("-") or not (match["eq"] or "~" in match["prefix"]):
            expanded.append(arg)
            continue
        if "~" in match["prefix"]:
            raise SystemExit(f"error: `{arg}` cannot delete a method option; set it (`{match['family']}."
                             f"{match['key']}=<value>`) or leave it at the method's default")
        first = len(expanded) if first is None else first
        families.append(match["family"])
        expanded.append("++" + arg[len(match["prefix"]):])
    if first is not None:
        selected = _selected_method(args, sorted(set(families)))
        if selected:
            expanded.insert(first, f"method={selected}")
    return expanded


def _selected_method(args: Sequence[str], families: list[str]) -> str | None:
    """The `method=` to add for these shorthand families (None: the command or its preset chooses)."""
    chosen = [value for arg in args for key, _, value in [arg.lstrip("+").partition("=")] if key == "method"]
    if chosen:
        named = {name for value in chosen for name in re.findall(r"\w+", value)}
        if not any("glob" in value for value in chosen):
            for family in families:
                if not named & {family, COMPARE}:
                    raise SystemExit(f"error: {family}.* options need method={family} (or method={COMPARE}), but "
                                     f"the command says method={chosen[-1]}")
        return None
    if any(arg.lstrip("+").startswith("experiments=") for arg in args):
        return None  # the preset chooses; options for a method it does not run fail at composition
    if len(families) > 1:
        raise SystemExit(f"error: options for {len(families)} methods ({', '.join(f'{f}.*' for f in families)}) "
                         f"and no method=: say which runs, e.g. method={COMPARE} or a grid "
                         f"-m method={','.join(families)}")
    return families[0]


def sweeps_methods(args: Sequence[str]) -> bool:
    """Whether the command is a grid over methods: it sweeps `method=` or a preset (`+experiments=a,b`). Only then
    may a job drop the options of a method it does not run."""
    for arg in args:
        key, _, value = arg.lstrip("+").partition("=")
        if key in ("method", "experiments") and _is_sweep(value):
            return True
    return False


def _is_sweep(value: str) -> bool:
    """Hydra's sweep syntax: `a,b`, or a sweep function (`choice(a,b)`, `range(...)`, `glob(...)`)."""
    return bool(re.match(r"^(choice|range|glob)\(", value)) or ("," in value and not value.startswith("["))


def prepare_job_config(config: DictConfig, strict: bool = True) -> None:
    """Move the method options into the method they configure and refuse keys no schema has (see the module
    docstring). In place; a config already prepared is left as it is. `strict`: options for a method the job does
    not run are an error (False only in a grid over methods)."""
    apply_method_options(config, strict)
    check_known_keys(config)


def apply_method_options(config: DictConfig, strict: bool) -> None:
    """Move each method's option dict (`cd`, `rpkd`, `onpolicy`) into the method it configures, or drop it."""
    given = {family: config[family] for family in method_options() if family in config}
    if not given:
        return
    with open_dict(config):
        for family in given:
            del config[family]
    method = config.method.name
    for family, options in given.items():
        _validate_options(family, options)
        if method == family:
            _merge_into(config, "method", options)
        elif method == COMPARE and family in config.method:
            _merge_into(config.method, family, options)
        elif strict:
            raise ConfigError(f"{family}.* options ({', '.join(_leaf_keys(options))}) were given, but this run's "
                              f"method is {method}: choose method={family}, or drop them")
        else:
            logger.info("method %s: the %s.* options are for the %s jobs of this grid", method, family, family)


def _merge_into(parent: DictConfig, key: str, options: DictConfig) -> None:
    """parent.<key> := itself with `options` merged in: validated by, and still typed by, its schema."""
    merged = OmegaConf.merge(parent[key], options)
    with open_dict(parent):
        parent[key] = merged


def _validate_options(family: str, options: Any) -> None:
    """Fail on a key or value the method's schema refuses, naming it, even in a job that does not run the method."""
    if not isinstance(options, DictConfig):
        raise ConfigError(f"`{family}=...` sets no option; write {family}.<key>=<value>")
    try:
        OmegaConf.merge(OmegaConf.structured(method_class(family).config_class), options)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{family}.{error.full_key}: {_first_line(error)}") from error


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items_ex(resolve=False):
        keys += _leaf_keys(value, f"{prefix}{key}.") if isinstance(value, DictConfig) else [f"{prefix}{key}"]
    return keys


def check_known_keys(config: DictConfig) -> None:
    """Refuse keys that no schema declares. `+key=value` (or a preset) can add them, and nothing reads them: a
    misspelt `+task.limt=5` would silently run the default, under a new run identity."""
    unknown = unknown_keys(config)
    if unknown:
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: no run "
                          "setting has this name (check the spelling; `bench --cfg job` prints every "
                          "setting). `+` adds only +experiments=<preset>, or a key of a map such as "
                          "+method.lora_dropout_by_arm.<arm>=0.2")


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys of `node` that its structured schema (and those of its typed children) does not declare; maps
    (`dict[str, float]` fields) take any key."""
    schema = OmegaConf.get_type(node)
    declared = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    found = []
    for key, value in node.items_ex(resolve=False):
        if declared is not None and key not in declared and not (prefix == "" and key in _HYDRA_KEYS):
            found += ([f"{prefix}{key}.{leaf}" for leaf in _leaf_keys(value)] if isinstance(value, DictConfig)
                      else [f"{prefix}{key}"])
        elif isinstance(value, DictConfig) and not (prefix == "" and key in _HYDRA_KEYS):
            found += unknown_keys(value, f"{prefix}{key}.")
    return found


@contextmanager
def method_options_at_composition(grid: bool = False) -> Iterator[None]:
    """While the CLI runs, every job config Hydra composes is prepared (`prepare_job_config`) as it is composed;
    `grid`: the command is a grid over methods (`sweeps_methods`), whose jobs drop other methods' options.

    Hydra has no composition hook, and the task function alone is too late: `--cfg job`, `--help` and each job's
    .hydra/config.yaml would show the options unmerged. So the config loader's `load_configuration` is wrapped for
    the duration: configs composed to run (one job, each job of a sweep, `--cfg`, `--help`) are prepared, the
    sweep's master config (multirun, whose per-job values are not applied yet) is not. Errors become Hydra's
    composition errors: a message, no traceback."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.errors import ConfigCompositionException
    from hydra.types import RunMode

    load = ConfigLoaderImpl.load_configuration

    @functools.wraps(load)
    def load_configuration(self: ConfigLoaderImpl, config_name: str | None, overrides: list[str],
                           run_mode: RunMode, *args: Any, **kwargs: Any) -> DictConfig:
        config = load(self, config_name, overrides, run_mode, *args, **kwargs)
        if run_mode == RunMode.RUN:
            try:
                prepare_job_config(config, strict=not grid)
            except ConfigError as error:
                raise ConfigCompositionException(f"Error composing the run's config: {error}") from None
        return config

    ConfigLoaderImpl.load_configuration = load_configuration  # type: ignore[method-assign]
    try:
        yield
    finally:
        ConfigLoaderImpl.load_configuration = load  # type: ignore[method-assign]
