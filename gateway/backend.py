"""The backend interface, its result type and the registry that picks one by name.

Implementations: ``local`` (in-process diffusers, in ``backend/``), ``http`` (a worker over
HTTP), ``replicate`` (hosted), and ``fake`` (tests and benchmarks). They are all built through
:func:`create_backend`, by import path, so importing the gateway never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from gateway.request import ImageRequest

if TYPE_CHECKING:
    from gateway.settings import Settings

#: Called on the event loop with (steps done, total steps).
ProgressCallback = Callable[[int, int], None]


@dataclass
class GenerationResult:
    """What a backend made: PNG bytes of the images that passed the safety filter."""

    images: list[bytes]
    seeds: list[int]
    model: str
    blocked: int = 0
    prompt_truncated: bool = False
    timings: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    name: str

    @property
    def capacity(self) -> int:
        """How many jobs the gateway should run on it at once."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def check_available(self) -> None:
        """Raise :class:`gateway.errors.BackendUnavailable` to refuse work before any charge."""
        ...

    async def generate(
        self, job_id: str, request: ImageRequest, progress: ProgressCallback
    ) -> GenerationResult:
        """Make ``request.num_images`` images, image ``i`` from seed ``request.seed + i``.

        Cancellation is task cancellation; failures are :class:`gateway.errors.BackendError`.
        """
        ...


BACKENDS: dict[str, str] = {
    "local": "backend.local:LocalBackend",
    "http": "gateway.http_backend:HttpBackend",
    "replicate": "gateway.replicate_backend:ReplicateBackend",
    "fake": "gateway.fake_backend:FakeBackend",
}


def register_backend(name: str, import_path: str) -> None:
    """Make ``IMAGINE_BACKEND=name`` build ``module:Class`` (which takes the settings)."""
    BACKENDS[name] = import_path


def create_backend(settings: Settings) -> Backend:
    name = settings.backend
    try:
        import_path = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"IMAGINE_BACKEND={name!r} is not a backend; choose one of {known}.") from None
    module_name, _, class_name = import_path.partition(":")
    factory = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = factory(settings)
    return backend
