"""A minimal OpenAI-compatible server over any curate backend (loopback tests, local debugging).

``python -m curate.models.serve MODEL_DIR --port 8000`` serves ``/v1/completions`` and
``/v1/chat/completions`` from the ``transformers`` backend. ``make_server`` takes an optional
``hook(path, body)`` that may answer a request itself with ``(status, payload, headers)``: tests
use it to inject 429s, 5xx, stalls and malformed bodies. Not a production server (one model,
threads, no streaming).
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from curate.models.base import Backend, SamplingParams

Hook = Callable[[str, dict[str, Any]], "tuple[int, Any, dict[str, str]] | None"]


def _payload(backend: Backend, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    chat = path.endswith("/chat/completions")
    prompt = body["messages"][-1]["content"] if chat else body["prompt"]
    params = SamplingParams(max_tokens=int(body.get("max_tokens") or 16), temperature=float(body.get("temperature", 1.0)),
                            top_p=float(body.get("top_p", 1.0)), n=int(body.get("n", 1)), seed=int(body.get("seed") or 0),
                            stop=tuple(body.get("stop") or ()))
    comps = backend.generate([prompt], params)[0]
    if comps and comps[0].error:
        return 400, {"error": {"message": comps[0].error, "type": "invalid_request_error"}}
    choices = []
    for i, c in enumerate(comps):
        choice: dict[str, Any] = {"index": i, "finish_reason": c.finish_reason,
                                  "usage": {"completion_tokens": c.completion_tokens}}
        if chat:
            choice["message"] = {"role": "assistant", "content": c.text}
        else:
            choice["text"] = c.text
        choices.append(choice)
    usage = {"prompt_tokens": comps[0].prompt_tokens if comps else 0,
             "completion_tokens": sum(c.completion_tokens for c in comps)}
    return 200, {"object": "chat.completion" if chat else "text_completion", "model": body.get("model"),
                 "choices": choices, "usage": usage}


def make_server(backend: Backend, host: str = "127.0.0.1", port: int = 0, hook: Hook | None = None) -> ThreadingHTTPServer:
    """A started-on-demand server (call ``serve_forever`` or ``start_in_thread``); port 0 picks a free one."""
    lock = threading.Lock()  # one generate at a time: the model is not thread-safe

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": backend.model, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:  # noqa: N802
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            except ValueError:
                self._send(400, {"error": {"message": "body is not JSON"}})
                return
            if hook is not None:
                answer = hook(self.path, body)
                if answer is not None:
                    self._send(*answer)
                    return
            if not self.path.rstrip("/").endswith("completions"):
                self._send(404, {"error": {"message": "not found"}})
                return
            try:
                with lock:
                    status, payload = _payload(backend, self.path, body)
            except (KeyError, TypeError, ValueError) as e:
                status, payload = 400, {"error": {"message": f"bad request: {e}"}}
            self._send(status, payload)

    return ThreadingHTTPServer((host, port), Handler)


def start_in_thread(server: ThreadingHTTPServer) -> str:
    """Serve in a daemon thread; returns the base URL (``http://host:port/v1``)."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/v1"


def main(argv: list[str] | None = None) -> None:
    from curate.models import get_backend

    ap = argparse.ArgumentParser(prog="python -m curate.models.serve", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a transformers model folder or name")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)
    server = make_server(get_backend({"backend": "transformers", "name_or_path": args.model, "cache": False}),
                         args.host, args.port)
    print(f"serving {args.model} on http://{args.host}:{server.server_address[1]}/v1")
    server.serve_forever()


if __name__ == "__main__":
    main()
