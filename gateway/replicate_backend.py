"""The ``replicate`` backend: a hosted Stable Diffusion model on Replicate, through the replicate client.

The input uses the same field names as the worker (``gateway/cog.py``). A prediction is
created, polled (its logs give the progress), and its images fetched; a job that is cancelled
or times out cancels the prediction on Replicate too, so nobody pays for an image no one
will see. ``failed``, ``canceled`` and ``aborted`` predictions end in a refund with the reason.
``REPLICATE_BASE_URL`` points the client at another server (a local fake in the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from typing import TYPE_CHECKING, Any

import httpx

from gateway.backend import GenerationResult, ProgressCallback
from gateway.cog import PNG_SIGNATURE, png_from_data_uri, request_to_input, safe_reason
from gateway.errors import BackendError
from gateway.request import ImageRequest
from gateway.settings import require

if TYPE_CHECKING:
    from replicate.client import Client

    from gateway.settings import Settings

log = logging.getLogger("imagine.backend.replicate")

MAX_IMAGE_BYTES = 20 * 1024 * 1024
FINISHED = frozenset({"succeeded", "failed", "canceled", "aborted"})


class ReplicateBackend:
    """Predictions on ``IMAGINE_REPLICATE_MODEL`` (``owner/name`` or ``owner/name:version``)."""

    name = "replicate"

    def __init__(self, settings: Settings, *, poll_interval: float = 0.5) -> None:
        self.settings = settings
        self.token = require(settings.replicate_api_token, "REPLICATE_API_TOKEN", "IMAGINE_BACKEND=replicate")
        from replicate.identifier import ModelVersionIdentifier

        try:
            owner, model_name, version = ModelVersionIdentifier.parse(settings.replicate_model)
        except ValueError:
            from gateway.settings import SettingsError

            raise SettingsError(
                "IMAGINE_REPLICATE_MODEL must be owner/name or owner/name:version; "
                f"got {settings.replicate_model!r}."
            ) from None
        self.model_ref = f"{owner}/{model_name}"
        self.version: str | None = version
        self.poll_interval = poll_interval
        self._client: Client | None = None
        self._downloads: httpx.AsyncClient | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def capacity(self) -> int:
        """Replicate scales by itself; this bounds what one gateway keeps in flight there."""
        return 8

    async def start(self) -> None:
        from replicate.client import Client

        self._client = Client(
            api_token=self.token.get(),
            base_url=self.settings.replicate_base_url or "https://api.replicate.com",
            timeout=httpx.Timeout(30.0, connect=10.0),
        )
        # Output files are fetched without the token: it is for the API, not for file hosts.
        self._downloads = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=True)

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=10.0)
        if self._downloads is not None:
            await self._downloads.aclose()
            self._downloads = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client._async_client.aclose()
            self._client = None

    def check_available(self) -> None:
        return None

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("ReplicateBackend.start() was not called")
        return self._client

    async def generate(
        self, job_id: str, request: ImageRequest, progress: ProgressCallback
    ) -> GenerationResult:
        started = time.monotonic()
        payload = request_to_input(request, replicate_names=True)
        # 1. Create the prediction.
        prediction_id = await self._create(payload)
        # 2. Poll until it ends; a cancelled job cancels the prediction.
        try:
            data = await self._wait(prediction_id, request, progress)
        except asyncio.CancelledError:
            self._cancel_later(prediction_id)
            raise
        status = data.get("status")
        if status == "failed":
            raise BackendError(f"Replicate: {safe_reason(data.get('error') or 'the model failed')}")
        if status == "canceled":
            raise BackendError("the prediction was cancelled on Replicate")
        if status == "aborted":
            raise BackendError("Replicate aborted the prediction")
        # 3. Fetch the images.
        output = data.get("output")
        items = output if isinstance(output, list) else [output] if isinstance(output, str) else []
        if not items:
            raise BackendError("Replicate returned no images")
        images = [await self._fetch(item) for item in items]
        assert request.seed is not None, "the gateway sets the seed"
        metrics = data.get("metrics") or {}
        timings = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        timings.setdefault("round_trip", time.monotonic() - started)
        progress(request.steps, request.steps)
        return GenerationResult(
            images=images,
            seeds=[request.seed + i for i in range(len(images))],
            model=f"replicate:{self.model_ref}",
            timings=timings,
        )

    async def _create(self, payload: dict[str, Any]) -> str:
        from replicate.exceptions import ReplicateError

        for attempt in range(4):
            try:
                if self.version is None:
                    try:
                        prediction = await self.client.predictions.async_create(
                            model=self.model_ref, input=payload
                        )
                    except ReplicateError as exc:
                        if exc.status != 404:
                            raise
                        # Not an "official" model: run its latest version instead.
                        model = await self.client.models.async_get(self.model_ref)
                        if model.latest_version is None:
                            raise BackendError(f"Replicate has no version of {self.model_ref}") from None
                        self.version = model.latest_version.id
                        continue
                else:
                    prediction = await self.client.predictions.async_create(
                        version=self.version, input=payload
                    )
                return str(prediction.id)
            except ReplicateError as exc:
                if exc.status == 429 and attempt < 3:
                    await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
                    continue
                raise BackendError(_replicate_reason(exc)) from None
            except httpx.HTTPError as exc:
                raise BackendError(f"could not reach Replicate ({type(exc).__name__})") from None
        raise BackendError("Replicate kept refusing new predictions (rate limit)")

    async def _wait(
        self, prediction_id: str, request: ImageRequest, progress: ProgressCallback
    ) -> dict[str, Any]:
        from replicate.exceptions import ReplicateError

        last_step = -1
        errors = 0
        while True:
            try:
                data = await self._get(prediction_id)
                errors = 0
            except ReplicateError as exc:
                raise BackendError(_replicate_reason(exc)) from None
            except httpx.HTTPError as exc:
                errors += 1  # a poll is a GET: safe to repeat, a few times
                if errors >= 5:
                    raise BackendError(f"lost contact with Replicate ({type(exc).__name__})") from None
                await asyncio.sleep(self.poll_interval * errors)
                continue
            if data.get("status") in FINISHED:
                return data
            step = _progress_from_logs(data.get("logs"))
            if step is not None and step[0] != last_step:
                last_step = step[0]
                progress(min(step[0], request.steps), request.steps)
            await asyncio.sleep(self.poll_interval)

    async def _get(self, prediction_id: str) -> dict[str, Any]:
        """The prediction as plain JSON (so a status newer than the client's models still reads)."""
        response = await self.client._async_request("GET", f"/v1/predictions/{prediction_id}")
        try:
            data = response.json()
        except ValueError:
            raise BackendError("Replicate's answer was not valid JSON") from None
        if not isinstance(data, dict):
            raise BackendError("Replicate's answer was not a prediction")
        return data

    async def _fetch(self, item: object) -> bytes:
        if isinstance(item, str) and item.startswith("data:"):
            if item.startswith("data:image/png;"):
                try:
                    return png_from_data_uri(item)
                except ValueError as exc:
                    raise BackendError(f"Replicate's output was malformed ({exc})") from None
            import base64

            data = item.partition(",")[2]
            try:
                return _as_png(base64.b64decode(data))
            except ValueError:
                raise BackendError("Replicate's output was malformed") from None
        if not isinstance(item, str) or not item.startswith(("https://", "http://")):
            raise BackendError("Replicate's output was not an image URL")
        assert self._downloads is not None
        try:
            async with self._downloads.stream("GET", item) as response:
                if response.status_code != 200:
                    raise BackendError(
                        f"could not fetch the image from Replicate (HTTP {response.status_code})"
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_IMAGE_BYTES:
                        raise BackendError("an image from Replicate was larger than 20 MB")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise BackendError(f"could not fetch the image from Replicate ({type(exc).__name__})") from None
        try:
            return _as_png(b"".join(chunks))
        except ValueError:
            raise BackendError("Replicate's output was not an image") from None

    def _cancel_later(self, prediction_id: str) -> None:
        async def cancel() -> None:
            try:
                await self.client.predictions.async_cancel(prediction_id)
                log.info("cancelled Replicate prediction %s", prediction_id)
            except Exception as exc:  # best effort: the job is already refunded
                log.warning("could not cancel Replicate prediction %s: %s", prediction_id, type(exc).__name__)

        task = asyncio.create_task(cancel(), name=f"imagine-replicate-cancel-{prediction_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _replicate_reason(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    if status == 401:
        return "Replicate refused REPLICATE_API_TOKEN"
    if status == 402:
        return "the Replicate account cannot pay for predictions"
    if status == 404:
        return "Replicate does not know IMAGINE_REPLICATE_MODEL"
    detail = getattr(exc, "detail", None) or getattr(exc, "title", None)
    return f"Replicate: {safe_reason(detail)}" if detail else f"Replicate answered HTTP {status}"


def _progress_from_logs(logs: object) -> tuple[int, int] | None:
    """``  40%|████      | 10/25 [...]`` (tqdm in the model's logs) -> (10, 25)."""
    if not isinstance(logs, str) or not logs:
        return None
    from replicate.prediction import Prediction

    parsed = Prediction.Progress.parse(logs)
    return None if parsed is None else (parsed.current, parsed.total)


def _as_png(data: bytes) -> bytes:
    """PNG bytes as they are; JPEG/WebP (some models' default) re-encoded as PNG."""
    if data.startswith(PNG_SIGNATURE):
        return data
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            out = io.BytesIO()
            image.save(out, format="PNG")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError("not an image") from exc
    return out.getvalue()
