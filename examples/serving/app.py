"""An HTTP inference service that serves a warmed torch_rc bundle with zero tuning.

    # on the build machine (once):
    torch-rc warmup examples.serving.model:build_model --input 1x16:int64 \\
        --bucket 1x16 --bucket 1x32 --batch-sizes 1,2,4 --trials 64 --bundle model.trc
    # on every replica (pip install -e '.[serving]' for FastAPI and uvicorn):
    SERVE_BUNDLE=model.trc SERVE_BUCKETS="1x16;1x32" SERVE_BATCH_SIZES=1,2,4 \\
        uvicorn examples.serving.app:app --host 127.0.0.1 --port 8000

Environment: SERVE_BUNDLE (bundle to load; optional), SERVE_BUCKETS (semicolon-separated
shapes, as warmed), SERVE_BATCH_SIZES, SERVE_BACKEND (reasoning | eager | inductor; the last two
are for comparison), SERVE_DEVICE (cpu | cuda; the bundle must then be warmed with
``--device cuda`` on the same GPU kind). Replicas never tune and never call an LLM: the service runs with
``tune="never"``. POST /predict {"tokens": [[...], ...]} -> {"logits": [[...]], "compiled": bool}
("compiled": compiled code answered, i.e. a warmed bucket whose graphs run compiled);
GET /stats -> hits, misses, start-up time, cache hits, tuning runs (always 0).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import torch

try:
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel
except ImportError as exc:  # the core install stays lean: the server is an extra
    raise SystemExit(
        "the serving example needs FastAPI and uvicorn: pip install -e '.[serving]'"
    ) from exc

from examples.serving.model import VOCAB, build_model, example_inputs

STARTED = time.perf_counter()


def server_command(port: int) -> list[str]:
    """The command that serves this app on 127.0.0.1:``port`` (run from the repository root)."""
    import sys

    return [
        sys.executable,
        "-m",
        "uvicorn",
        "examples.serving.app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def _buckets() -> list[list[tuple[int, ...]]]:
    shapes = [
        tuple(int(d) for d in b.split("x"))
        for b in os.environ.get("SERVE_BUCKETS", "1x16").split(";")
        if b
    ]
    sizes = [int(n) for n in os.environ.get("SERVE_BATCH_SIZES", "").split(",") if n]
    if sizes:
        shapes = [(n, *s[1:]) for s in shapes for n in sizes]
    return [[s] for s in shapes]


class Request(BaseModel):
    tokens: list[list[int]]


class Service:
    def __init__(self) -> None:
        self.device = torch.device(os.environ.get("SERVE_DEVICE", "cpu"))
        self.model = build_model().to(self.device)
        self.backend = os.environ.get("SERVE_BACKEND", "reasoning")
        self.lock = threading.Lock()
        if self.backend == "reasoning":
            from torch_rc.serving import ServingModel

            self.runner = ServingModel(
                self.model,
                [x.to(self.device) for x in example_inputs()],
                _buckets(),
                bundle=os.environ.get("SERVE_BUNDLE") or None,
            )
        elif self.backend == "inductor":
            compiled = torch.compile(self.model, dynamic=False)
            for bucket in _buckets():
                with torch.no_grad():
                    compiled(torch.zeros(bucket[0], dtype=torch.int64, device=self.device))
            self.runner = compiled
        else:
            self.runner = self.model
        self.startup_s = time.perf_counter() - STARTED

    def predict(self, tokens: torch.Tensor) -> tuple[torch.Tensor, bool]:
        tokens = tokens.to(self.device)
        if self.backend == "reasoning":
            return self.runner.run(tokens)
        with self.lock, torch.no_grad():
            return self.runner(tokens), self.backend != "eager"


service: Service | None = None


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI):
    global service
    service = Service()  # loads the bundle and compiles every bucket before the first request
    yield


app = FastAPI(title="torch_rc serving example", lifespan=lifespan)


@app.post("/predict")
def predict(request: Request) -> dict:
    rows = request.tokens
    if not rows or len({len(r) for r in rows}) != 1 or not rows[0]:
        raise HTTPException(422, "tokens must be a non-empty rectangular list of lists")
    tokens = torch.tensor(rows, dtype=torch.int64)
    if int(tokens.min()) < 0 or int(tokens.max()) >= VOCAB:
        raise HTTPException(422, f"token ids must be in 0..{VOCAB - 1}")
    out, compiled = service.predict(tokens)
    return {"logits": out.tolist(), "compiled": compiled}


@app.get("/stats")
def stats() -> dict:
    base = {"backend": service.backend, "startup_s": round(service.startup_s, 3)}
    if service.backend == "reasoning":
        base.update(service.runner.stats())
    return base
