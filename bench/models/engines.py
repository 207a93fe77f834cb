"""The command line that serves a model config, per engine: `vllm serve` or `transformers serve`.

Pure composition (no process is started here), so the exact argv is testable without the engine installed. The
harness owns the flags that decide where the server listens and under which names it serves what (model, --host,
--port, --dtype, --revision, LoRA and served-name flags) and refuses them in `server.args`: a second `--port` there
would win argparse's last-one-wins and leave the health check polling the wrong port.

vLLM (https://docs.vllm.ai, `vllm serve --help`):
    vllm serve <model> --host 127.0.0.1 --port N --served-model-name <name> --dtype <dtype> [--revision R]
               [--enable-lora --max-lora-rank K --lora-modules <arm>=<adapter folder> ...] <server.args>
  the base model is served as the config's `name`, each LoRA adapter by its own name; K is the smallest rank vLLM
  accepts (1, 8, 16, 32, ... 512) that holds the largest adapter's `r`. A path holding `=` or `,` is passed in the
  JSON form ({"name": ..., "path": ...}) that `--lora-modules` also reads, since `name=path` splits on them.
transformers (`transformers serve --help`, transformers 5.x):
    transformers serve <model> --host 127.0.0.1 --port N --dtype <dtype> <server.args>
  the model is preloaded and pinned, and requests must name it exactly as given; it serves no LoRA adapters.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import DType, Engine, ModelConfig

# vLLM's accepted --max-lora-rank values (vllm/config/lora.py MaxLoRARanks); its default is 16
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
OWNED_FLAGS = {
    Engine.vllm: ("--model", "--host", "--port", "--served-model-name", "--dtype", "--revision", "--enable-lora",
                  "--lora-modules", "--max-lora-rank"),
    Engine.transformers: ("--host", "--port", "--dtype"),
}
SUPPORTS_ADAPTERS = {Engine.vllm: True, Engine.transformers: False}


@dataclass(frozen=True)
class Launch:
    """What to run, and the names the server will list in /v1/models once ready."""

    argv: list[str]
    base_name: str  # the request's `model` for the base weights
    adapter_names: dict[str, str] = field(default_factory=dict)  # adapter key -> the request's `model` for it

    @property
    def served_names(self) -> list[str]:
        return [self.base_name, *self.adapter_names.values()]


def default_launcher(engine: Engine) -> list[str]:
    """`<engine> serve`, the executable beside the running Python (its virtual environment) or else on PATH."""
    name = engine.value
    beside = Path(sys.executable).with_name(name)
    executable = str(beside) if beside.exists() else shutil.which(name)
    if executable is None:
        hint = ("pip install vllm (Linux with a GPU)" if engine is Engine.vllm
                else "pip install 'transformers[serving]'")
        raise FileNotFoundError(f"server.engine={name}: no `{name}` executable beside {sys.executable} or on PATH; "
                                f"{hint}, or set server.command to the launcher, e.g. [/path/to/{name}, serve]")
    return [executable, "serve"]


def weights_source(config: ModelConfig) -> str:
    """What the server loads: a hub id as is, a local folder as an absolute path (the server may not share the
    harness's working directory), the embedded SmolLM2 as its converted folder."""
    from bench.models import embedded

    if config.tiny or config.model_id == embedded.TINY:
        raise ValueError(f"model {config.name!r}: the tiny model is built in memory and cannot be served; save it "
                         "with save_pretrained and set model_id to that folder")
    if config.gguf_file:
        raise ValueError(f"model {config.name!r}: a managed server does not load gguf_file; give a transformers "
                         "folder or hub id as model_id")
    if config.model_id == embedded.SMOLLM2:
        return str(embedded.smollm2_folder())
    if config.model_id.startswith(("/", "./", "../", "~")):
        path = Path(config.model_id).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"model {config.name!r} (model_id): no model folder at {path}")
        return str(path)
    return config.model_id


def adapter_rank(adapter: Path) -> int:
    """The LoRA rank `r` of a peft adapter folder (a LoRA adapter is what vLLM serves by name)."""
    config_file = adapter / "adapter_config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"no LoRA adapter at {adapter} (expected adapter_config.json there)")
    settings = json.loads(config_file.read_text())
    if settings.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{adapter} is a {settings['peft_type']} adapter; servers serve LoRA adapters only")
    return int(settings["r"])


def max_lora_rank(ranks: Sequence[int]) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds every adapter (a larger one only wastes GPU memory)."""
    largest = max(ranks)
    for allowed in VLLM_LORA_RANKS:
        if allowed >= largest:
            return allowed
    raise ValueError(f"LoRA rank {largest} exceeds vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]})")


def check_args(engine: Engine, args: Sequence[str]) -> None:
    owned = [arg for arg in args if arg.split("=", 1)[0] in OWNED_FLAGS[engine]]
    if owned:
        raise ValueError(f"server.args sets {', '.join(owned)}, which the harness sets itself for engine={engine.value}"
                         " (host/port: it picks and health-checks them; dtype: from the model's `dtype`; LoRA and "
                         "names: from the adapters it serves); remove them from server.args")


def compose_launch(config: ModelConfig, port: int, adapters: Mapping[str, Path] | None = None,
                   host: str = "127.0.0.1", launcher: Sequence[str] | None = None) -> Launch:
    """The argv serving `config` (and each adapter under its key) on host:port. `launcher` defaults to
    server.command, else `<engine> serve` found by default_launcher."""
    server = config.server
    if server.engine is None:
        raise ValueError(f"model {config.name!r} has no server.engine: nothing to launch")
    engine = Engine(server.engine)
    adapters = {name: Path(path).expanduser().resolve() for name, path in (adapters or {}).items()}
    if adapters and not SUPPORTS_ADAPTERS[engine]:
        raise ValueError(f"server.engine={engine.value} cannot serve LoRA adapters ({', '.join(adapters)}); use "
                         "server.engine=vllm, or backend=hf to apply them in-process")
    check_args(engine, server.args)
    prefix = list(launcher or server.command or default_launcher(engine))
    model = weights_source(config)
    if engine is Engine.transformers:
        if config.revision:
            model = f"{model}@{config.revision}"  # its pinned model is named `repo@revision`
        argv = [*prefix, model, "--host", host, "--port", str(port), "--dtype", DType(config.dtype).value,
                *server.args]
        return Launch(argv=argv, base_name=model)
    base_name = config.name
    if base_name in adapters:
        raise ValueError(f"adapter name {base_name!r} is the base model's served name; rename the adapter")
    argv = [*prefix, model, "--host", host, "--port", str(port), "--served-model-name", base_name,
            "--dtype", DType(config.dtype).value]
    if config.revision:
        argv += ["--revision", config.revision]
    if adapters:
        argv += ["--enable-lora", "--max-lora-rank", str(max_lora_rank([adapter_rank(p) for p in adapters.values()])),
                 "--lora-modules", *(_lora_module(name, path) for name, path in adapters.items())]
    return Launch(argv=[*argv, *server.args], base_name=base_name, adapter_names={name: name for name in adapters})


def _lora_module(name: str, path: Path) -> str:
    if "=" in name or "," in name or not name:
        raise ValueError(f"adapter name {name!r} cannot be served: it must be non-empty, without '=' or ','")
    text = str(path)
    if "=" in text or "," in text:  # vLLM splits name=path on '=' and reads anything with ',' as JSON
        return json.dumps({"name": name, "path": text})
    return f"{name}={text}"
