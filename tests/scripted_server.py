"""A minimal HTTP server speaking the real /v1/chat/completions JSON protocol with scripted failures.

`transformers serve` cannot be told to answer 429 or 500, so retry behaviour is tested against this: it answers
the first requests with the scripted steps (a status code, or a Step with a delay, raw body or headers), then with
a well-formed chat completion (after `delay_s`). Every request is logged with its arrival time and path, so tests
can check that nothing was sent after a point (Ctrl-C), and `served` counts the completions it delivered (what a
paid API would bill). `routes` answers other paths (`/v1/completions`, vLLM's `/tokenize`) with a handler's JSON,
for endpoints `transformers serve` lacks; a path with no route and no scripted step gets a chat completion.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Step:
    """One scripted answer. `body` replaces the JSON reply (an HTML proxy page, truncated JSON); `delay_s` is
    waited after the request arrived and before answering (a slow or hanging server)."""

    status: int = 200
    delay_s: float = 0.0
    body: str | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() when the request arrived
    body: dict
    path: str = ""


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that went away (Ctrl-C, timeout) mid-reply is expected here, not a test failure."""


class ScriptedServer:
    def __init__(self, statuses: list[int | Step] | None = None,
                 reply: str | Callable[[dict], str] = "The answer is 4.", prompt_tokens: int = 11,
                 completion_tokens: int = 5, choices: int | None = None, delay_s: float = 0.0,
                 routes: dict[str, Callable[[dict], dict]] | None = None) -> None:
        self.statuses: list[int | Step] = list(statuses or [])
        self.choices = choices  # None: as many as the request's n; a number (0 = none) fakes a broken server
        self.usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}
        self.reply = reply
        self.delay_s = delay_s  # for the unscripted (well-formed) replies
        self.routes = dict(routes or {})  # path -> JSON reply of a well-formed answer there
        self.requests: list[dict] = []
        self.log: list[Received] = []
        self.served = 0  # well-formed completions delivered
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                step = owner._next_step(body, self.path)
                time.sleep(step.delay_s)
                payload = owner._payload(step, body, self.path)
                data = payload.encode()
                self.send_response(step.status)
                self.send_header("Content-Type", step.content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in step.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
                if step.status == 200 and step.body is None:
                    with owner._lock:
                        owner.served += 1

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _next_step(self, body: dict, path: str = "") -> Step:
        with self._lock:
            self.requests.append(body)
            self.log.append(Received(time.monotonic(), body, path))
            scripted = self.statuses.pop(0) if self.statuses else Step(delay_s=self.delay_s)
        return scripted if isinstance(scripted, Step) else Step(scripted)

    def _payload(self, step: Step, body: dict, path: str = "") -> str:
        if step.body is not None:
            return step.body
        if step.status != 200:
            return json.dumps({"error": {"message": f"scripted status {step.status}", "type": "test",
                                         "code": step.status}})
        if path in self.routes:
            return json.dumps(self.routes[path](body))
        count = body.get("n", 1) if self.choices is None else self.choices
        return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": i, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": self.answer(body)}}
                                       for i in range(count)],
                           "usage": self.usage})

    def answer(self, body: dict) -> str:
        return self.reply(body) if callable(self.reply) else self.reply

    def requests_after(self, moment: float) -> list[Received]:
        """Requests that arrived after `moment` (a time.monotonic() value)."""
        with self._lock:
            return [entry for entry in self.log if entry.at > moment]

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
