"""A misbehaving worker on loopback: a raw HTTP/1.1 server whose answers follow a script.

The ``http`` backend is tested against this real socket server rather than a mocked transport,
so connection drops, hangs and oversized bodies happen on the wire as they would in production.
Each ``PUT``/``POST`` to ``/predictions...`` takes the next behaviour from :attr:`script`
(then :attr:`default`):

``"ok"``            200 with a succeeded prediction (PNG data URIs)
``("status", n)``   HTTP n with a small JSON body (``("status", 503, "2")`` adds ``Retry-After: 2``)
``("failed", why)`` 200 with a failed prediction
``("delay", s)``    wait s seconds, then ``"ok"``
``"hang"``          never answer (until the server closes)
``"drop"``          close the connection without an answer
``"malformed"``     200 with a body that is not JSON
``("huge", n)``     200 declaring and sending n bytes
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.cog import png_data_uri
from gateway.fake_backend import solid_png

Behaviour = str | tuple[Any, ...]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ScriptedWorker:
    script: list[Behaviour] = field(default_factory=list)
    default: Behaviour = "ok"
    health: dict[str, Any] = field(default_factory=lambda: {"status": "READY", "queue": 0})
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def predictions(self) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/predictions") and not s.path.endswith("/cancel")]

    @property
    def cancels(self) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith("/cancel")]

    async def start(self, port: int = 0) -> ScriptedWorker:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while not self._closing.is_set():
                request = await self._read_request(reader)
                if request is None:
                    return
                self.seen.append(request)
                if not await self._answer(request, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> Seen | None:
        line = await reader.readline()
        if not line:
            return None
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        return Seen(method, path, headers, body, time.monotonic())

    async def _answer(self, request: Seen, writer: asyncio.StreamWriter) -> bool:
        """Write the answer; False closes the connection."""
        if request.path == "/health-check":
            return await _send(writer, 200, json.dumps(self.health).encode())
        if request.path.endswith("/cancel"):
            return await _send(writer, 200, json.dumps({"status": "canceled"}).encode())
        behaviour: Behaviour = self.script.pop(0) if self.script else self.default
        kind = behaviour if isinstance(behaviour, str) else behaviour[0]
        arg: Any = behaviour[1] if isinstance(behaviour, tuple) and len(behaviour) > 1 else None
        if kind == "delay":
            await asyncio.sleep(arg)
            kind = "ok"
        if kind == "ok":
            return await _send(writer, 200, json.dumps(succeeded(request)).encode())
        if kind == "status":
            extra = {"Retry-After": behaviour[2]} if len(behaviour) > 2 else {}
            return await _send(writer, arg, b'{"detail": "scripted"}', extra)
        if kind == "failed":
            body: dict[str, Any] = {
                "id": "x",
                "status": "failed",
                "output": None,
                "error": arg,
                "metrics": {},
            }
            return await _send(writer, 200, json.dumps(body).encode())
        if kind == "hang":
            await self._closing.wait()
            return False
        if kind == "drop":
            return False
        if kind == "malformed":
            return await _send(writer, 200, b'{"status": "succeeded", "output": [')
        if kind == "huge":
            size: int = arg
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
            writer.write(head.encode())
            chunk = b" " * (1024 * 1024)
            sent = 0
            while sent < size:
                writer.write(chunk[: size - sent])
                sent += min(len(chunk), size - sent)
                await writer.drain()
            return True
        raise AssertionError(f"unknown behaviour {behaviour!r}")


def succeeded(request: Seen) -> dict[str, Any]:
    data = request.json()
    inp = data["input"]
    seed = inp.get("seed", 0)
    images = [
        png_data_uri(solid_png(inp.get("width", 512), inp.get("height", 512), ((seed + i) % 256, 0, 0)))
        for i in range(inp.get("num_outputs", 1))
    ]
    return {
        "id": data.get("id", "x"),
        "status": "succeeded",
        "output": images,
        "error": None,
        "metrics": {"predict_time": 0.01},
        "seed": seed,
    }


async def _send(
    writer: asyncio.StreamWriter, status: int, body: bytes, extra: dict[str, str] | None = None
) -> bool:
    reason = {200: "OK", 401: "Unauthorized", 409: "Conflict", 429: "Too Many Requests"}.get(status, "X")
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(extra or {})}
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    return True
