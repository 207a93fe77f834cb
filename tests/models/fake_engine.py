"""A stand-in for `vllm serve` (vLLM needs a GPU, so it cannot run here): parses the flags the harness composes,
records its argv, lists the base model and every `--lora-modules` adapter in GET /v1/models, and answers chat
completions naming the model each request asked for, so a test sees which adapter answered.

    python fake_engine.py <model> --host H --port P [--served-model-name N] [--enable-lora --max-lora-rank K
                          --lora-modules a=/path {"name": "b", "path": "/p"} ...] [other flags, ignored]

Environment: FAKE_ENGINE_RECORD (append one JSON line per launch: pid, argv, served names, child pid),
FAKE_ENGINE_MODE (comma-separated): crash (log a CUDA OOM, exit 3 before binding), silent (never bind),
stubborn (ignore SIGTERM), spawn (fork a child that sleeps in the same process group), die_after_ready (exit
1 s after binding); FAKE_ENGINE_DELAY_S: seconds of "loading" before binding.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse(argv: list[str]) -> dict:
    model, flags, lora, index = None, {}, [], 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--lora-modules":
            index += 1
            while index < len(argv) and not argv[index].startswith("--"):
                item = argv[index]
                lora.append(json.loads(item)["name"] if item.startswith("{") else item.split("=", 1)[0])
                index += 1
            continue
        if arg.startswith("--"):
            if index + 1 < len(argv) and not argv[index + 1].startswith("--"):
                flags[arg] = argv[index + 1]
                index += 2
            else:
                flags[arg] = True
                index += 1
            continue
        model = model or arg
        index += 1
    return {"model": model, "flags": flags, "lora": lora}


def main() -> None:
    parsed = parse(sys.argv[1:])
    modes = set(filter(None, os.environ.get("FAKE_ENGINE_MODE", "").split(",")))
    names = [parsed["flags"].get("--served-model-name", parsed["model"]), *parsed["lora"]]
    child = None
    if "spawn" in modes:
        child = os.fork()
        if child == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a worker that outlives its leader unless SIGKILLed
            while True:
                time.sleep(60)
    record = os.environ.get("FAKE_ENGINE_RECORD")
    if record:
        with open(record, "a") as stream:
            stream.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "names": names, "child": child}) + "\n")
    print(f"fake engine: loading {parsed['model']}", flush=True)
    if "stubborn" in modes:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "crash" in modes:
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
        sys.exit(3)
    if "silent" in modes:
        while True:
            time.sleep(60)
    time.sleep(float(os.environ.get("FAKE_ENGINE_DELAY_S", "0")))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model"} for name in names]})
            elif self.path == "/health":
                self._send(200, {})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body.get("model") not in names:  # as vLLM: a name it does not serve is a 404
                self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                return
            choices = [{"index": i, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"[{body['model']}] The answer is 4."}}
                       for i in range(body.get("n") or 1)]
            self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": choices,
                             "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}})

    server = ThreadingHTTPServer((parsed["flags"]["--host"], int(parsed["flags"]["--port"])), Handler)
    if "die_after_ready" in modes:
        threading.Timer(1.0, lambda: os._exit(1)).start()
    print(f"fake engine: serving {names}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
