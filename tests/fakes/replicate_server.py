"""A fake of the Replicate HTTP API on loopback, for driving the real ``replicate`` client in tests.

It speaks the routes the ``replicate`` backend uses, with Replicate's JSON shapes:

- ``POST /v1/models/{owner}/{name}/predictions`` (official models; 404 for models in ``versioned_only``)
- ``POST /v1/predictions`` with ``{"version", "input"}``
- ``GET /v1/models/{owner}/{name}`` (for ``latest_version``, whose ``openapi_schema`` lists the
  model's inputs from :attr:`FakeReplicate.inputs`) and ``GET /v1/models/{owner}/{name}/versions/{id}``
- ``GET /v1/predictions/{id}``: each poll moves the prediction on: ``starting``, then ``processing``
  with tqdm lines in ``logs``, then :attr:`FakeReplicate.outcome`
- ``POST /v1/predictions/{id}/cancel``
- ``GET /files/{name}``: the output images. Output URLs are ``https://replicate.delivery/files/...`` as
  Replicate gives them (the backend's test-only ``LoopbackDelivery`` brings them here); set
  :attr:`FakeReplicate.output_url` to hand out other URLs, ``"data"`` for sync mode's ``data:`` URIs
- ``GET /redirect/{name}``: a 302 to :attr:`FakeReplicate.redirect_to`

The next :attr:`FakeReplicate.rate_limited_creates` prediction creates answer 429.

Outcomes: ``"succeeded"``, ``("failed", error)``, ``"canceled"``, ``"aborted"``, ``"hang"`` (processing
for ever).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.cog import png_data_uri
from gateway.fake_backend import solid_png

VERSION = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"
#: The inputs of Replicate's text-to-image Stable Diffusion, and of its img2img model.
TEXT_INPUTS = (
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "num_outputs",
    "num_inference_steps",
    "guidance_scale",
    "scheduler",
    "seed",
)
IMG2IMG_INPUTS = (*TEXT_INPUTS, "image", "prompt_strength")


@dataclass
class Prediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    status: str = "starting"
    polls: int = 0
    output: list[str] | None = None
    error: str | None = None
    logs: str = ""

    def json(self, base: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "status": self.status,
            "input": self.input,
            "output": self.output,
            "logs": self.logs,
            "error": self.error,
            "metrics": {"predict_time": 0.5} if self.status == "succeeded" else {},
            "created_at": "2026-11-26T12:00:00.000Z",
            "started_at": None,
            "completed_at": None,
            "urls": {
                "get": f"{base}/v1/predictions/{self.id}",
                "cancel": f"{base}/v1/predictions/{self.id}/cancel",
            },
        }


@dataclass
class FakeReplicate:
    token: str = "r8_test_token"
    outcome: str | tuple[str, str] = "succeeded"
    image_format: str = "PNG"
    polls_before_done: int = 3
    versioned_only: set[str] = field(default_factory=set)
    #: How many of the next prediction creates answer 429 (too many predictions starting at once).
    rate_limited_creates: int = 0
    #: Template of each output; ``{base}`` is this server, ``{name}`` the file. Or ``"data"``.
    output_url: str = "https://replicate.delivery/files/{name}"
    redirect_to: str = "https://replicate.delivery/files/{name}"
    #: ``user:password`` this server wants as Basic auth instead of the token (a proxy's own check).
    basic_auth: str | None = None
    #: Each model's input names, as its schema lists them (others: :data:`TEXT_INPUTS`).
    inputs: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"stability-ai/stable-diffusion-img2img": IMG2IMG_INPUTS}
    )
    predictions: dict[str, Prediction] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    port: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models/{owner}/{name}/predictions", self.create_for_model, methods=["POST"]),
                Route("/v1/models/{owner}/{name}", self.get_model, methods=["GET"]),
                Route("/v1/models/{owner}/{name}/versions/{id}", self.get_version, methods=["GET"]),
                Route("/v1/predictions", self.create, methods=["POST"]),
                Route("/v1/predictions/{id}", self.get, methods=["GET"]),
                Route("/v1/predictions/{id}/cancel", self.cancel, methods=["POST"]),
                Route("/files/{name}", self.file, methods=["GET"]),
                Route("/redirect/{name}", self.redirect, methods=["GET"]),
            ]
        )

    async def start(self) -> FakeReplicate:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10)

    # --- routes ------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        self.requests.append((request.method, request.url.path, dict(request.headers)))
        if self.basic_auth is not None:  # a proxy in front that checks its own credentials
            expected = base64.b64encode(self.basic_auth.encode()).decode()
            return request.headers.get("authorization") == f"Basic {expected}"
        return request.headers.get("authorization") == f"Bearer {self.token}"

    @staticmethod
    def _unauthorized() -> JSONResponse:
        return JSONResponse({"title": "Unauthenticated", "detail": "You did not pass a valid token"}, 401)

    async def create_for_model(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        model = f"{request.path_params['owner']}/{request.path_params['name']}"
        if model in self.versioned_only:
            return JSONResponse(
                {"title": "Not found", "detail": "The requested resource could not be found"}, 404
            )
        body = await request.json()
        return self._new(model, VERSION, body["input"])

    async def create(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        body = await request.json()
        if body.get("version") != VERSION:
            return JSONResponse(
                {"title": "Invalid version", "detail": "Invalid version or not permitted"}, 422
            )
        return self._new("stability-ai/stable-diffusion", body["version"], body["input"])

    def _new(self, model: str, version: str, inp: dict[str, Any]) -> Response:
        if self.rate_limited_creates > 0:
            self.rate_limited_creates -= 1
            return JSONResponse({"title": "Too many requests", "detail": "Request was throttled."}, 429)
        prediction = Prediction(id=f"pred{next(self._ids):04d}", model=model, version=version, input=inp)
        self.predictions[prediction.id] = prediction
        return JSONResponse(prediction.json(self.base_url), 201)

    async def get_model(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        owner, name = request.path_params["owner"], request.path_params["name"]
        return JSONResponse(
            {
                "url": f"https://replicate.com/{owner}/{name}",
                "owner": owner,
                "name": name,
                "description": "fake",
                "visibility": "public",
                "github_url": None,
                "paper_url": None,
                "license_url": None,
                "run_count": 1,
                "cover_image_url": None,
                "default_example": None,
                "latest_version": self._version(f"{owner}/{name}"),
            }
        )

    async def get_version(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        if request.path_params["id"] != VERSION:
            return JSONResponse({"detail": "Not found."}, 404)
        return JSONResponse(self._version(f"{request.path_params['owner']}/{request.path_params['name']}"))

    def _version(self, model: str) -> dict[str, Any]:
        properties = {name: {"title": name} for name in self.inputs.get(model, TEXT_INPUTS)}
        return {
            "id": VERSION,
            "created_at": "2026-01-01T00:00:00Z",
            "cog_version": "0.9.0",
            "openapi_schema": {
                "components": {"schemas": {"Input": {"type": "object", "properties": properties}}}
            },
        }

    async def get(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        prediction = self.predictions.get(request.path_params["id"])
        if prediction is None:
            return JSONResponse({"detail": "Not found."}, 404)
        self._advance(prediction)
        return JSONResponse(prediction.json(self.base_url))

    def _advance(self, p: Prediction) -> None:
        if p.status not in ("starting", "processing"):
            return
        p.polls += 1
        steps = int(p.input.get("num_inference_steps", 25))
        if "image" in p.input:  # img2img's progress bar counts strength x steps
            steps = max(1, int(steps * float(p.input.get("prompt_strength", 0.8))))
        if p.polls < self.polls_before_done or self.outcome == "hang":
            p.status = "processing"
            done = min(steps, p.polls * steps // self.polls_before_done)
            bar = "#" * (10 * done // steps)
            p.logs = f"Using seed: {p.input.get('seed')}\n{100 * done // steps:3d}%|{bar:<10}| {done}/{steps}"
            return
        if self.outcome == "succeeded":
            p.status = "succeeded"
            n = int(p.input.get("num_outputs", 1))
            p.output = [self._output(f"{p.id}-{i}.img") for i in range(n)]
        elif isinstance(self.outcome, tuple):
            p.status, p.error = self.outcome
        else:
            p.status = self.outcome

    async def cancel(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        prediction = self.predictions.get(request.path_params["id"])
        if prediction is None:
            return JSONResponse({"detail": "Not found."}, 404)
        self.cancelled.append(prediction.id)
        prediction.status = "canceled"
        return JSONResponse(prediction.json(self.base_url))

    def _output(self, name: str) -> str:
        if self.output_url == "data":
            return png_data_uri(self._png(name))
        return self.output_url.format(base=self.base_url, name=name)

    def _png(self, name: str) -> bytes:
        pid, _, rest = name.partition("-")
        prediction = self.predictions[pid]
        width, height = int(prediction.input["width"]), int(prediction.input["height"])
        return solid_png(width, height, (int(rest.split(".")[0]) * 40, 90, 200))

    async def redirect(self, request: Request) -> Response:
        self.requests.append((request.method, request.url.path, dict(request.headers)))
        target = self.redirect_to.format(base=self.base_url, name=request.path_params["name"])
        return Response(status_code=302, headers={"location": target})

    async def file(self, request: Request) -> Response:
        self.requests.append((request.method, request.url.path, dict(request.headers)))
        png = self._png(request.path_params["name"])
        if self.image_format == "huge":
            return Response(b"\0" * (21 * 1024 * 1024), media_type="image/png")
        if self.image_format == "PNG":
            return Response(png, media_type="image/png")
        from PIL import Image

        out = io.BytesIO()
        Image.open(io.BytesIO(png)).save(out, format=self.image_format)
        return Response(out.getvalue(), media_type=f"image/{self.image_format.lower()}")
