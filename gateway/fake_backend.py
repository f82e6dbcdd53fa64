"""A backend that makes real PNGs without a model: for tests and benchmarks of everything above it.

It is registered as ``IMAGINE_BACKEND=fake`` and built through the same path as the real ones.
Its pixels are a pure function of the request and seed, so "same seed, same image" holds.
Behaviour for tests is set through attributes (``delay``, ``fail_with``, ``block``), or through
``IMAGINE_FAKE_DELAY`` (seconds per step) and ``IMAGINE_FAKE_IMAGE_BYTES`` (pad each PNG to about
that size, for memory soaks) in a child process.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import zlib
from typing import TYPE_CHECKING

from gateway.backend import GenerationResult, ProgressCallback
from gateway.errors import BackendError
from gateway.request import ImageRequest

if TYPE_CHECKING:
    from gateway.settings import Settings


def solid_png(width: int, height: int, rgb: tuple[int, int, int], *, pad_to: int = 0) -> bytes:
    """A valid PNG of one colour, made with zlib alone (no Pillow needed on the light side).

    ``pad_to`` adds a private ancillary chunk (which decoders skip) up to about that many bytes.
    """
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    raw = row * height
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    out = io.BytesIO()
    out.write(b"\x89PNG\r\n\x1a\n")
    out.write(chunk(b"IHDR", header))
    out.write(chunk(b"IDAT", zlib.compress(raw, 1)))
    if (missing := pad_to - out.tell() - 24) > 0:
        seed = bytes(rgb) * 11 + b"imagine"
        out.write(chunk(b"paDd", (seed * (missing // len(seed) + 1))[:missing]))
    out.write(chunk(b"IEND", b""))
    return out.getvalue()


class FakeBackend:
    name = "fake"

    def __init__(self, settings: Settings | None = None) -> None:
        self.delay = float(settings.extra.get("IMAGINE_FAKE_DELAY", "0")) if settings else 0.0
        self.image_bytes = int(settings.extra.get("IMAGINE_FAKE_IMAGE_BYTES", "0")) if settings else 0
        self.fail_with: BackendError | None = None
        self.block = False  # the "safety filter" blocks every image
        self.unavailable: str | None = None
        self.calls: list[tuple[str, ImageRequest]] = []
        self.capacity_value = 4
        self.started = False

    @property
    def capacity(self) -> int:
        return self.capacity_value

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.started = False

    def check_available(self) -> None:
        if self.unavailable:
            from gateway.errors import BackendUnavailable

            raise BackendUnavailable(self.unavailable)

    async def generate(
        self, job_id: str, request: ImageRequest, progress: ProgressCallback
    ) -> GenerationResult:
        self.calls.append((job_id, request))
        started = time.perf_counter()
        assert request.seed is not None, "the gateway sets the seed"
        for step in range(1, request.denoise_steps + 1):
            if self.delay:
                await asyncio.sleep(self.delay)
            progress(step, request.denoise_steps)
        if self.fail_with is not None:
            raise self.fail_with
        seeds = [request.seed + i for i in range(request.num_images)]
        if self.block:
            return GenerationResult([], seeds, "fake", blocked=len(seeds))
        images = []
        for seed in seeds:
            digest = hashlib.sha256(f"{request.prompt}|{seed}".encode()).digest()
            rgb = (digest[0], digest[1], digest[2])
            images.append(solid_png(request.width, request.height, rgb, pad_to=self.image_bytes))
        return GenerationResult(
            images, seeds, "fake", timings={"predict_time": time.perf_counter() - started}
        )
