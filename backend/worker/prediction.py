"""One prediction in flight: its request, its times, and the Cog JSON it answers with.

A prediction is ``starting`` while queued, ``processing`` once its batch runs, and ends
``succeeded``, ``failed`` or ``canceled``; the first final answer stands, encoded once as the
bytes it is served as (and counted by :class:`backend.finished.FinishedPredictions`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from backend.pipeline import BatchKey, batch_key
from backend.worker.schema import TERMINAL, encode_json, iso
from gateway.backend import GenerationResult
from gateway.cog import png_data_uri
from gateway.request import ImageRequest


@dataclass(eq=False)
class Prediction:
    id: str
    request: ImageRequest
    input: dict[str, Any]
    created_at: float = field(default_factory=time.time)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    completed_at: float | None = None
    #: The final response as the JSON bytes it is served as: encoded once, counted by the byte budget.
    body: bytes | None = None
    status: str = "starting"
    done: asyncio.Event = field(default_factory=asyncio.Event)
    canceled: bool = False

    @property
    def batch_key(self) -> BatchKey:
        """The pipeline's own key: text and img2img, or two strengths, never share a call."""
        return batch_key(self.request)

    def finish(self, response: dict[str, Any]) -> bool:
        """Record the final response; False if it already had one (the first answer stands)."""
        if self.body is not None:
            return False
        self.completed_at = time.time()
        self.status = response["status"]
        self.body = encode_json(response)
        self.done.set()
        return True

    def snapshot(self, model: str) -> dict[str, Any]:
        """In flight as Cog shows it: ``starting`` while queued, then ``processing``."""
        status = "processing" if self.started_at is not None else "starting"
        return self.response(model, status=status)

    def as_succeeded(self, model: str, result: GenerationResult, metrics: dict[str, float]) -> dict[str, Any]:
        return self.response(
            model,
            status="succeeded",
            output=[png_data_uri(png) for png in result.images],
            metrics=metrics,
            result=result,
        )

    def as_failed(self, model: str, reason: str, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        return self.response(model, status="failed", error=reason, metrics=metrics)

    def as_canceled(self, model: str, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        return self.response(model, status="canceled", metrics=metrics)

    def response(
        self,
        model: str,
        *,
        status: str,
        output: list[str] | None = None,
        error: str | None = None,
        metrics: dict[str, float] | None = None,
        result: GenerationResult | None = None,
    ) -> dict[str, Any]:
        """The Cog prediction response (:class:`backend.worker.schema.PredictionResponse`)."""
        seed = self.request.seed
        assert seed is not None
        seeds = result.seeds if result is not None else [seed + i for i in range(self.request.num_images)]
        metrics = dict(metrics or {})
        if result is not None:
            for key, value in result.timings.items():
                metrics.setdefault(key, value)
        return {
            "id": self.id,
            "status": status,
            "input": self.input,
            "output": output,
            "error": error,
            "logs": "",
            "metrics": metrics,
            "seed": seed,
            "seeds": seeds,
            "blocked": result.blocked if result is not None else 0,
            "prompt_truncated": result.prompt_truncated if result is not None else False,
            "model": (result.model if result is not None else "") or model,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "completed_at": iso(time.time()) if status in TERMINAL else None,
        }
