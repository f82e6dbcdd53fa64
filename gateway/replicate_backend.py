"""The ``replicate`` backend: a hosted Stable Diffusion model on Replicate, through the replicate client.

The input uses the same field names as the worker (``gateway/cog.py``). A prediction is
created, polled (its logs give the progress), and its images fetched; a job that is cancelled
or times out cancels the prediction on Replicate too, so nobody pays for an image no one
will see. ``failed``, ``canceled`` and ``aborted`` predictions end in a refund with the reason.
``REPLICATE_BASE_URL`` points the client at another server (a local fake in the tests).

Output URLs come from a third party and are fetched from inside the operator's network, so they
are a server-side request forgery risk: an image is fetched only over https from Replicate's
delivery hosts (``IMAGINE_REPLICATE_DELIVERY_HOSTS``), from an address the gateway resolved and
checked itself (never loopback, private, link-local, multicast or reserved; the connection goes to
that very address, so a second DNS answer cannot differ), following redirects only within those
hosts, each hop checked again. ``data:`` outputs (Replicate's sync mode) need no fetch.

Img2img (image prompts, upscale, vary) sends ``image`` (a PNG data URI) and ``prompt_strength``, as
Replicate's Stable Diffusion img2img models name them, to a model whose input schema has ``image``;
a model without one fails the job (refunded) with a sentence naming ``IMAGINE_REPLICATE_MODEL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_incrementing,
)

from gateway.backend import GenerationResult, ProgressCallback
from gateway.cog import PNG_SIGNATURE, png_from_data_uri, request_to_input, safe_reason
from gateway.errors import BackendError
from gateway.http_backend import split_userinfo
from gateway.request import ImageRequest
from gateway.result_fetch import (
    MAX_REDIRECTS,
    REDIRECTS,
    LoopbackDelivery,
    RefusedURL,
    check_result_url,
    public_address,
    read_capped,
    shown_url,
)
from gateway.settings import require

if TYPE_CHECKING:
    from replicate.client import Client

    from gateway.settings import Settings

log = logging.getLogger("imagine.backend.replicate")

FINISHED = frozenset({"succeeded", "failed", "canceled", "aborted"})


class ReplicateBackend:
    """Predictions on ``IMAGINE_REPLICATE_MODEL`` (``owner/name`` or ``owner/name:version``)."""

    name = "replicate"

    def __init__(
        self,
        settings: Settings,
        *,
        poll_interval: float = 0.5,
        loopback_delivery_for_tests: LoopbackDelivery | None = None,
    ) -> None:
        self.settings = settings
        self.delivery_hosts = settings.replicate_delivery_hosts
        self._loopback_delivery = loopback_delivery_for_tests
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
        #: The model's input names from its schema, once Replicate said them.
        self._input_names: frozenset[str] | None = None
        self._downloads: httpx.AsyncClient | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def capacity(self) -> int:
        """Replicate scales by itself; this bounds what one gateway keeps in flight there."""
        return 8

    async def start(self) -> None:
        from replicate.client import Client

        # Credentials inside REPLICATE_BASE_URL travel as Basic auth, outside the URL httpx logs.
        base_url, auth = split_userinfo(self.settings.replicate_base_url or "https://api.replicate.com")
        self._client = Client(
            api_token=self.token.get(),
            base_url=base_url,
            timeout=httpx.Timeout(30.0, connect=10.0),
            **({"auth": auth} if auth is not None else {}),
        )
        # Output files are fetched without the token: it is for the API, not for file hosts.
        # Redirects are followed by hand (each hop checked); no keep-alive, so a connection made
        # for one host name (its certificate checked for that name) never serves another.
        self._downloads = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=10.0),
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

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
        if request.init_image is not None:
            await self._check_takes_image(payload)
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
        images = [await self._fetch(job_id, item) for item in items]
        assert request.seed is not None, "the gateway sets the seed"
        metrics = data.get("metrics") or {}
        timings = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        timings.setdefault("round_trip", time.monotonic() - started)
        progress(request.denoise_steps, request.denoise_steps)
        return GenerationResult(
            images=images,
            seeds=[request.seed + i for i in range(len(images))],
            model=f"replicate:{self.model_ref}",
            timings=timings,
        )

    async def _check_takes_image(self, payload: dict[str, Any]) -> None:
        """Refuse img2img for a model whose input schema has no ``image``; drop ``prompt_strength``
        where the schema lacks it. A model whose schema Replicate does not give is sent both."""
        names = await self.input_names()
        if names is None:
            return
        if "image" not in names:
            raise BackendError(
                f"IMAGINE_REPLICATE_MODEL ({safe_reason(self.model_ref, 80)}) takes no image, so it cannot "
                "make image prompts, upscales or variations; set it to an img2img model such as "
                "stability-ai/stable-diffusion-img2img"
            )
        if "prompt_strength" not in names:
            payload.pop("prompt_strength", None)

    async def input_names(self) -> frozenset[str] | None:
        """The configured model's input names, from its OpenAPI schema (None when Replicate gives none)."""
        if self._input_names is not None:
            return self._input_names
        from replicate.exceptions import ReplicateError

        if self.version is not None:
            path = f"/v1/models/{self.model_ref}/versions/{self.version}"
        else:
            path = f"/v1/models/{self.model_ref}"
        try:
            response = await self.client._async_request("GET", path)
            data = response.json()
        except ReplicateError as exc:
            raise BackendError(_replicate_reason(exc)) from None
        except httpx.HTTPError as exc:
            raise BackendError(f"could not reach Replicate ({type(exc).__name__})") from None
        except ValueError:
            return None
        version = data.get("latest_version") if self.version is None and isinstance(data, dict) else data
        schema = version.get("openapi_schema") if isinstance(version, dict) else None
        try:
            properties = schema["components"]["schemas"]["Input"]["properties"]  # type: ignore[index]
        except (KeyError, TypeError):
            return None
        if not isinstance(properties, dict) or not properties:
            return None
        self._input_names = frozenset(str(name) for name in properties)
        return self._input_names

    async def _create(self, payload: dict[str, Any]) -> str:
        from replicate.exceptions import ReplicateError

        # A 429 (too many predictions starting at once) is tried again, 0.5, 1 and 2 s later.
        retrying = AsyncRetrying(
            stop=stop_after_attempt(4),
            retry=retry_if_exception(_rate_limited),
            wait=wait_exponential(multiplier=0.5, max=10.0),
            reraise=True,
        )
        try:
            return await retrying(self._create_once, payload)
        except ReplicateError as exc:
            raise BackendError(_replicate_reason(exc)) from None
        except httpx.HTTPError as exc:
            raise BackendError(f"could not reach Replicate ({type(exc).__name__})") from None

    async def _create_once(self, payload: dict[str, Any]) -> str:
        from replicate.exceptions import ReplicateError

        if self.version is None:
            try:
                prediction = await self.client.predictions.async_create(model=self.model_ref, input=payload)
                return str(prediction.id)
            except ReplicateError as exc:
                if exc.status != 404:
                    raise
            # Not an "official" model: run its latest version instead.
            model = await self.client.models.async_get(self.model_ref)
            if model.latest_version is None:
                raise BackendError(f"Replicate has no version of {self.model_ref}")
            self.version = model.latest_version.id
        prediction = await self.client.predictions.async_create(version=self.version, input=payload)
        return str(prediction.id)

    async def _wait(
        self, prediction_id: str, request: ImageRequest, progress: ProgressCallback
    ) -> dict[str, Any]:
        from replicate.exceptions import ReplicateError

        # A poll is a GET, safe to repeat: up to five tries in a row, waiting a little longer each time.
        poll = AsyncRetrying(
            stop=stop_after_attempt(5),
            retry=retry_if_exception_type(httpx.HTTPError),
            wait=wait_incrementing(start=self.poll_interval, increment=self.poll_interval),
            reraise=True,
        )
        last_step = -1
        while True:
            try:
                data: dict[str, Any] = await poll(self._get, prediction_id)
            except ReplicateError as exc:
                raise BackendError(_replicate_reason(exc)) from None
            except httpx.HTTPError as exc:
                raise BackendError(f"lost contact with Replicate ({type(exc).__name__})") from None
            if data.get("status") in FINISHED:
                return data
            step = _progress_from_logs(data.get("logs"))
            if step is not None and step[0] != last_step:
                last_step = step[0]
                # Img2img runs strength x steps, and the model's progress bar counts those.
                progress(min(step[0], request.denoise_steps), request.denoise_steps)
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

    async def _fetch(self, job_id: str, item: object) -> bytes:
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
        try:
            raw = await self._download(item)
        except RefusedURL as exc:
            log.warning("job %s: refused Replicate's output URL %s: %s", job_id, shown_url(item), exc)
            raise BackendError(
                "Replicate's image URL was refused: the gateway fetches images only over https "
                "from Replicate's file hosts at public addresses"
            ) from None
        try:
            return _as_png(raw)
        except ValueError:
            raise BackendError("Replicate's output was not an image") from None

    async def _download(self, first: str) -> bytes:
        """The bytes at a result URL, each hop checked before anything connects."""
        assert self._downloads is not None
        try:
            url = httpx.URL(first)
        except httpx.InvalidURL:
            raise RefusedURL("it is not a valid URL") from None
        for _ in range(MAX_REDIRECTS + 1):
            host = check_result_url(url, self.delivery_hosts)
            if self._loopback_delivery is not None:  # tests: see LoopbackDelivery
                target = url.copy_with(scheme="http", host="127.0.0.1", port=self._loopback_delivery.port)
            else:
                target = url.copy_with(host=await public_address(host))
            try:
                async with self._downloads.stream(
                    "GET", target, headers={"Host": host}, extensions={"sni_hostname": host}
                ) as response:
                    if response.status_code in REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise BackendError("Replicate's file host redirected nowhere")
                        try:
                            url = url.join(location)
                        except httpx.InvalidURL:
                            raise RefusedURL("it redirected to an invalid URL") from None
                        continue
                    if response.status_code != 200:
                        raise BackendError(
                            f"could not fetch the image from Replicate (HTTP {response.status_code})"
                        )
                    return await read_capped(response)
            except httpx.HTTPError as exc:
                raise BackendError(
                    f"could not fetch the image from Replicate ({type(exc).__name__})"
                ) from None
        raise RefusedURL(f"it redirected more than {MAX_REDIRECTS} times")

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


def _rate_limited(exc: BaseException) -> bool:
    from replicate.exceptions import ReplicateError

    return isinstance(exc, ReplicateError) and exc.status == 429


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
