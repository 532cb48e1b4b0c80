"""A scripted OpenAI-compatible endpoint for fault tests (timeouts, 429, 500, garbage JSON).

Each request pops the next step of the script; the request bodies are kept for assertions. Only
fault injection uses this; the LLM path itself is tested against the real llama.cpp server.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(content: str, prompt_tokens: int = 100, completion_tokens: int = 20) -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@contextmanager
def scripted_endpoint(script: list):
    """Steps: ``("ok", content)``, ``("status", code, headers)``, ``("sleep", seconds)``,
    ``("raw", body_text)``, ``("drip", seconds_per_byte)``. Yields (base_url, requests) where requests collects the JSON bodies."""
    requests: list[dict] = []
    steps = list(script)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                requests.append(body)
                step = steps.pop(0) if steps else ("status", 500, {})
            kind = step[0]
            if kind == "drip":  # a valid answer, one byte at a time, never done in time
                payload = json.dumps(completion("{}")).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    for byte in payload:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(step[1])
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return
            if kind == "sleep":
                time.sleep(step[1])
                step = ("ok", "{}")
                kind = "ok"
            if kind == "status":
                self.send_response(step[1])
                for key, value in step[2].items():
                    self.send_header(key, value)
                payload = b'{"error": {"message": "scripted", "type": "scripted"}}'
            elif kind == "raw":
                self.send_response(200)
                payload = step[1].encode()
            else:
                self.send_response(200)
                payload = json.dumps(completion(step[1])).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            try:
                self.wfile.write(payload)
            except BrokenPipeError:
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    finally:
        server.shutdown()
        server.server_close()
