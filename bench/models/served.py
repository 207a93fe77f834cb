"""A model config with `server.engine` set: the harness serves it itself and talks to it as the openai backend.

`ServedModel` is one managed server for one config: the base weights plus any LoRA adapters, each served by name
(vLLM's --lora-modules), so every arm of an RP-KD run is evaluated by the same engine in one server. It hands out
a `ServedChatModel` per name. The server starts on the first request (not when the model is built: a run that
trains first must not have an inference engine holding the GPU meanwhile) on 127.0.0.1 (server.port, or a free
port), and `stop()` ends it; a stopped server starts again (on a new free port) at the next request.

Cache keys must not depend on the port, which changes every run: a served model's id is
`served:<engine>:<model_id>[@revision][+lora:<adapter fingerprint>]`, the same on any port and in any run, and
apart from the hf backend's ids and other engines' (different kernels, different greedy text at the margin).
Nothing else about serving (server.args, placement) is in the id, as the hf backend's id leaves out device and
batch size: flags that change the weights themselves (--quantization) deserve a different model_id or name.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.config import Engine, ModelConfig
from bench.models.base import Completion, GenerationRequest
from bench.models.engines import Launch, compose_launch, weights_source
from bench.models.server import ManagedServer, ServerStartError, free_port, log_tail

if TYPE_CHECKING:
    from bench.models.progress import GenerationProgress

logger = logging.getLogger(__name__)

OWN_ADAPTER = "adapter"  # the served name of the config's own adapter_path


def weights_id(config: ModelConfig) -> str:
    """The weights a served model answers with, as the hf backend names them (embedded models by version)."""
    from bench.models import embedded

    if config.model_id == embedded.SMOLLM2:
        return f"{embedded.SMOLLM2}@{embedded.smollm2_version()}"
    return f"{config.model_id}@{config.revision}" if config.revision else config.model_id


def check_served(config: ModelConfig) -> None:
    """Refuse, naming the key, a config that no managed server can run."""
    if not config.server.managed:
        raise ValueError(f"model {config.name!r} has no server.engine: it is not served by the harness")
    if config.backend != "openai":
        raise ValueError(f"model {config.name!r}: server.engine={config.server.engine} is reached through the OpenAI "
                         f"API, so set backend=openai (backend={config.backend} loads the weights in-process)")
    if config.base_url:
        raise ValueError(f"model {config.name!r} sets both base_url ({config.base_url}) and server.engine: the "
                         "harness picks the address of a server it starts; set base_url=null, or server.engine=null "
                         "to use the server at base_url")
    server = config.server
    if server.port is not None and not 1 <= server.port <= 65535:
        raise ValueError(f"model {config.name!r}: server.port={server.port} is no port; use 1-65535, or null for a "
                         "free one")
    if server.startup_timeout_s <= 0:
        raise ValueError(f"model {config.name!r}: server.startup_timeout_s must be > 0, got "
                         f"{server.startup_timeout_s}")


class ServedModel:
    """One managed server for `config`, serving the base weights and each of `adapters` (name -> peft folder)."""

    def __init__(self, config: ModelConfig, adapters: Mapping[str, str | Path] | None = None,
                 log_path: Path | None = None) -> None:
        check_served(config)
        self.config = config
        self.adapters = {name: Path(path) for name, path in (adapters or {}).items()}
        if config.adapter_path:
            if OWN_ADAPTER in self.adapters:
                raise ValueError(f"adapter name {OWN_ADAPTER!r} is taken by the model's own adapter_path")
            self.adapters[OWN_ADAPTER] = Path(config.adapter_path)
        self.engine = Engine(config.server.engine)
        # composed once now, on a placeholder port, so a missing engine, a refused flag, a missing folder or an
        # adapter the engine cannot serve fails when the model is built, before any work
        self._names: Launch = compose_launch(config, port=0, adapters=self.adapters)
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="bench-server-")) / "server.log"
        self._server: ManagedServer | None = None
        self._lock = threading.Lock()

    @property
    def adapter_names(self) -> Sequence[str]:
        return list(self._names.adapter_names)

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.running

    @property
    def server(self) -> ManagedServer | None:
        """The server process while it exists (None before the first request and after stop())."""
        return self._server

    def request_name(self, adapter: str | None = None) -> str:
        """The `model` a request names to reach the base weights (None) or an adapter; the config's own
        adapter_path, when it has one, is what None reaches."""
        if adapter is None:
            adapter = OWN_ADAPTER if self.config.adapter_path else None
        if adapter is None:
            return self._names.base_name
        if adapter not in self._names.adapter_names:
            raise KeyError(f"adapter {adapter!r} is not served here; served: {', '.join(self._names.adapter_names)}")
        return self._names.adapter_names[adapter]

    def model_id(self, adapter: str | None = None) -> str:
        self.request_name(adapter)  # refuses an unknown adapter
        if adapter is None and self.config.adapter_path:
            adapter = OWN_ADAPTER
        model_id = f"served:{self.engine.value}:{weights_id(self.config)}"
        if adapter is None:
            return model_id
        from bench.models.hf import _adapter_fingerprint  # the hf backend's fingerprint of the same adapter files

        return f"{model_id}+lora:{_adapter_fingerprint(self.adapters[adapter])}"

    def chat_model(self, adapter: str | None = None) -> ServedChatModel:
        return ServedChatModel(self, adapter)

    def start(self) -> str:
        """The server's base URL, starting it (and waiting until it serves every name) unless it is up."""
        with self._lock:
            if self._server is not None:
                if self._server.running:
                    return self._server.base_url
                crashed = self._server
                crashed.stop()  # reap it
                self._server = None
                raise ServerStartError(f"the server for {self.config.name!r} on {crashed.base_url} exited during "
                                       f"the run; last lines of {crashed.log_path}:\n{log_tail(crashed.log_path)}")
            port = self.config.server.port or free_port()
            launch = compose_launch(self.config, port=port, adapters=self.adapters)
            self._server = ManagedServer(launch.argv, port, launch.served_names, self.log_path,
                                         env=self.config.server.env,
                                         startup_timeout_s=self.config.server.startup_timeout_s,
                                         api_key=os.environ.get(self.config.api_key_env))
            try:
                return self._server.start()
            except BaseException:
                self._server = None  # start() stopped the process; the next request tries afresh
                raise

    def stop(self) -> None:
        """Stop the server (and every process it spawned), if it runs; the next request starts it again."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> ServedModel:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


class ServedChatModel:
    """One served name (the base weights or an adapter) behind the ChatModel protocol, as backend "openai"."""

    backend = "openai"

    def __init__(self, served: ServedModel, adapter: str | None = None) -> None:
        self.served = served
        self.adapter = adapter
        self.request_name = served.request_name(adapter)
        self._model_id = served.model_id(adapter)
        self._api = None
        self._tokenizer = None

    @property
    def model_id(self) -> str:
        return self._model_id

    def generate(self, requests: Sequence[GenerationRequest],
                 progress: bool | GenerationProgress = True) -> list[Completion]:
        if not requests:
            return []
        return self._client(self.served.start()).generate(requests, progress=progress)

    def _client(self, base_url: str):
        """The openai backend pointed at the server's current address (a restarted server has a new port)."""
        from bench.models.openai_api import OpenAIChatModel

        if self._api is None or self._api.base_url != base_url:
            self._api = OpenAIChatModel.from_config(self.served.config, model=self.request_name, base_url=base_url)
        return self._api

    @property
    def tokenizer(self):
        """The served weights' tokenizer, loaded here on first use: the weights are on this machine, and token-level
        RP-KD checks that a local teacher shares the student's vocabulary (as the hf backend's `tokenizer`)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            config = self.served.config
            kwargs = {"revision": config.revision} if config.revision else {}
            self._tokenizer = AutoTokenizer.from_pretrained(weights_source(config), **kwargs)
        return self._tokenizer

    def stop_server(self) -> None:
        """Stop the managed server behind this model (shared with the other names it serves)."""
        self.served.stop()
