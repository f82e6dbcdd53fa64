"""The GPU worker: the Stable Diffusion pipeline behind HTTP, compatible with the Cog prediction protocol.

It loads once and serves many (Cog's ``setup()``/``predict()`` split), split as Cog splits its
server, by what changes together:

- :mod:`~backend.worker.schema`: the body it takes and the JSON it answers (what
  :mod:`gateway.cog` does not already hold);
- :mod:`~backend.worker.prediction`: one prediction in flight and its Cog response;
- :mod:`~backend.worker.batcher`: dynamic batching of concurrent predictions;
- :mod:`~backend.worker.loader`: what setup loads (the real pipeline, or a runner given by tests);
- :mod:`~backend.worker.runner`: setup once, health, and the state machine of predictions;
- :mod:`~backend.worker.auth`: the bearer key, and listening on loopback only without one;
- :mod:`~backend.worker.http`: the thin routes, and :func:`serve` on uvicorn.

``create_app(settings, runner=...)`` builds the app around any batch runner (tests, benchmarks);
:func:`serve` runs it with the real pipeline (``imagine worker``).
"""

from __future__ import annotations

from backend.worker.auth import BearerAuth, bind_host, is_loopback
from backend.worker.batcher import Batcher
from backend.worker.http import BodyTooLarge, GracefulServer, create_app, read_body, serve
from backend.worker.loader import (
    WARMUP_REQUEST,
    BatchRunner,
    Loaded,
    Loader,
    pipeline_loader,
    process_started_at,
)
from backend.worker.prediction import Prediction
from backend.worker.runner import Health, Worker, WorkerFull
from backend.worker.schema import (
    BODY_FIELDS,
    MAX_BODY_BYTES,
    TERMINAL,
    ErrorResponse,
    PredictionInput,
    PredictionRequest,
    PredictionResponse,
    encode_json,
)

__all__ = [
    "BODY_FIELDS",
    "MAX_BODY_BYTES",
    "TERMINAL",
    "WARMUP_REQUEST",
    "BatchRunner",
    "Batcher",
    "BearerAuth",
    "BodyTooLarge",
    "ErrorResponse",
    "GracefulServer",
    "Health",
    "Loaded",
    "Loader",
    "Prediction",
    "PredictionInput",
    "PredictionRequest",
    "PredictionResponse",
    "Worker",
    "WorkerFull",
    "bind_host",
    "create_app",
    "encode_json",
    "is_loopback",
    "pipeline_loader",
    "process_started_at",
    "read_body",
    "serve",
]
