"""A minimal HTTP server speaking the real /v1/chat/completions JSON protocol with scripted failures.

`transformers serve` cannot be told to answer 429 or 500, so retry behaviour is tested against this: it answers
the first requests with the scripted status codes, then with a well-formed chat completion.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedServer:
    def __init__(self, statuses: list[int] | None = None, reply: str | Callable[[dict], str] = "The answer is 4.",
                 prompt_tokens: int = 11, completion_tokens: int = 5, choices: int | None = None) -> None:
        self.statuses = list(statuses or [])
        self.choices = choices  # None: as many as the request's n; a number (0 = none) fakes a broken server
        self.usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}
        self.reply = reply
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(body)
                status = owner.statuses.pop(0) if owner.statuses else 200
                if status == 200:
                    payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": i, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": owner.answer(body)}}
                                           for i in range(body.get("n", 1) if owner.choices is None
                                                          else owner.choices)],
                               "usage": owner.usage}
                else:
                    payload = {"error": {"message": f"scripted status {status}", "type": "test", "code": status}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, body: dict) -> str:
        return self.reply(body) if callable(self.reply) else self.reply

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
