"""The Stable Diffusion pipeline: load a model once, then turn batches of requests into PNGs.

Both the in-process backend (``backend.local``) and the GPU worker run images through
:class:`DiffusionRunner`. Importing this module is cheap: torch and diffusers are imported when a
model is loaded, so a worker can answer its health check while the weights load.

Reproducibility: image ``i`` of a request starts from the noise of its own CPU ``torch.Generator``
seeded with ``request.seed + i``, so the same request and seed give identical pixels, and an image
batched with other requests is the same image as made alone: the starting noise is identical, but
matrix kernels (MKL, cuBLAS) sum in another order at another batch size, which moves at most one
level of 255 on a fraction of a percent of the pixels. ``IMAGINE_MAX_BATCH=1`` makes every image
bit-exact at the cost of batching.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.models import (
    TINY_MODEL,
    ModelUnavailable,
    check_model_folder,
    dtype_argument,
    model_error_sentence,
)
from gateway.backend import GenerationResult
from gateway.errors import BackendError
from gateway.request import SCHEDULERS, ImageRequest

if TYPE_CHECKING:
    import torch

#: A diffusers ``StableDiffusionPipeline`` / scheduler. diffusers registers a pipeline's components
#: at run time, where mypy cannot see them, so they are typed loosely here.
StableDiffusionPipeline = Any
Scheduler = Any

log = logging.getLogger(__name__)

_MODEL_SCHEDULER_KEY = "_imagine_model_scheduler_config"

#: The request's scheduler names and the diffusers classes (with options) they stand for.
SCHEDULER_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    # "DPM++ 2M Karras": good images in 20-25 steps, the usual default of SD front ends.
    "dpmpp": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
}
assert set(SCHEDULER_CLASSES) == set(SCHEDULERS), "every request scheduler has a diffusers class"

#: Called from the pipeline thread with (steps done, total steps).
StepCallback = Callable[[int, int], None]
#: A cancel flag: a ``threading.Event`` or anything that answers "stop now?".
CancelFlag = threading.Event | Callable[[], bool]


class GenerationCancelled(Exception):
    """The caller asked to stop; the pipeline stopped between two denoising steps."""

    def __init__(self, step: int, total: int) -> None:
        super().__init__(f"The generation was cancelled after step {step} of {total}.")
        self.step = step
        self.total = total


@dataclass(frozen=True)
class BatchKey:
    """What requests must share to run in one pipeline call."""

    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str
    #: "text" for text-to-image; an image prompt, upscale or vary runs img2img, at one strength a call.
    kind: str = "text"
    strength: float | None = None


def batch_key(request: ImageRequest) -> BatchKey:
    """Requests with equal keys can be batched: one call, one set of denoising steps.

    Text and img2img never share a call (they are two pipelines), nor do img2img requests of
    different strengths (one strength sets the call's timesteps).
    """
    image_to_image = request.init_image is not None
    return BatchKey(
        request.width,
        request.height,
        request.steps,
        float(request.guidance),
        request.scheduler,
        request.kind if image_to_image else "text",
        float(request.strength if request.strength is not None else 1.0) if image_to_image else None,
    )


def diffusers_strength(scheduler: Scheduler, steps: int, denoise_steps: int) -> float:
    """The ``strength`` that makes diffusers' img2img run exactly ``denoise_steps`` timesteps of ``steps``.

    diffusers keeps the schedule's timesteps from index ``(steps - int(steps * strength)) * order``
    on. A product such as ``10 * 0.05`` would keep none (an error), float rounding could keep one
    fewer than promised, and PNDM's schedule has one timestep more than ``steps`` (its warm-up runs
    one twice), so one more would run. The count handed to diffusers is the largest that keeps
    ``denoise_steps`` distinct timesteps, plus half a step against rounding.
    """
    scheduler.set_timesteps(steps)
    timesteps = [float(t) for t in scheduler.timesteps]
    order = int(getattr(scheduler, "order", 1))
    for count in range(denoise_steps, 0, -1):
        if len(set(timesteps[(steps - count) * order :])) == denoise_steps:
            return min(1.0, (count + 0.5) / steps)
    return min(1.0, (denoise_steps + 0.5) / steps)


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_model(model: str, cache_dir: Path | None = None) -> str:
    """``tiny`` becomes its checkpoint folder (built on first use); anything else is kept."""
    if model == TINY_MODEL:
        from backend.tiny import tiny_model_path

        return str(tiny_model_path(cache_dir))
    return model


def load_pipeline(
    model: str,
    device: str | None = None,
    *,
    compile_unet: bool = False,
    compile_cache_dir: Path | None = None,
    cache_dir: Path | None = None,
    phase: Callable[[str], None] | None = None,
    timings: dict[str, float] | None = None,
) -> StableDiffusionPipeline:
    """Load ``model`` (a Hub id, a local folder, or ``tiny``) ready to run on ``device``.

    fp16 on CUDA, fp32 elsewhere; safetensors only (no pickled weights); the model's own safety
    checker is kept when it has one; DPM-Solver++ replaces the model's default scheduler. On
    CUDA the UNet is channels-last (SDPA attention is diffusers' default) and, with
    ``compile_unet``, compiled; the compiled kernels are cached in ``compile_cache_dir`` so a
    restart does not pay for compiling again. ``cache_dir`` is where ``tiny`` is built.
    ``phase`` hears each step's name as it starts and ``timings`` gets its seconds (``imports``,
    ``weights``, ``to_device``): the worker's health check reports where a cold start went.
    """
    timings = {} if timings is None else timings
    say = phase or (lambda _: None)
    say("importing torch and diffusers")
    started = time.perf_counter()
    import torch

    from backend.tiny import diffusers_module

    diffusers = diffusers_module()
    timings["imports"] = time.perf_counter() - started

    # 1. Resolve the name and the device
    device = device or default_device()
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    source = resolve_model(model, cache_dir)
    local = Path(source).is_dir()
    if local:
        check_model_folder(Path(source))

    # 2. Load the weights through from_pretrained, as for any published checkpoint
    #    (on CUDA straight onto the GPU, without a stop in CPU memory, where diffusers can)
    say(f"loading the weights of {model}")
    started = time.perf_counter()
    options: dict[str, Any] = {"use_safetensors": True, "local_files_only": local, **dtype_argument(dtype)}
    try:
        try:
            pipeline = diffusers.StableDiffusionPipeline.from_pretrained(
                source, **options, **({"device_map": device} if device.startswith("cuda") else {})
            )
        except (NotImplementedError, TypeError, RuntimeError):
            if not device.startswith("cuda"):
                raise
            pipeline = diffusers.StableDiffusionPipeline.from_pretrained(source, **options)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(model_error_sentence(model, exc)) from exc
    pipeline.set_progress_bar_config(disable=True)
    timings["weights"] = time.perf_counter() - started

    # 3. The default scheduler: DPM-Solver++ from the model's own noise schedule
    pipeline.scheduler = make_scheduler("dpmpp", model_scheduler_config(pipeline))

    # 4. Move to the device and speed up the UNet where it pays
    say(f"moving the model to {device}")
    started = time.perf_counter()
    pipeline.to(device)
    if device.startswith("cuda"):
        pipeline.unet.to(memory_format=torch.channels_last)
        torch.cuda.synchronize()
    timings["to_device"] = time.perf_counter() - started
    if compile_unet:
        if compile_cache_dir is not None:
            compile_cache_dir.mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir))
            os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
        mode = "reduce-overhead" if device.startswith("cuda") else None
        pipeline.unet = torch.compile(pipeline.unet, mode=mode, fullgraph=True)
    return pipeline


def model_scheduler_config(pipeline: StableDiffusionPipeline) -> dict[str, Any]:
    """The scheduler config the model was published with, even after the scheduler was swapped."""
    config = pipeline.scheduler.config
    original = config.get(_MODEL_SCHEDULER_KEY)
    return dict(original) if original is not None else dict(config)


def make_scheduler(name: str, base_config: dict[str, Any]) -> Scheduler:
    """A scheduler of kind ``name`` built ``from_config`` of the model's noise schedule.

    The model's own config is kept inside the new one, so the next swap starts from it again
    rather than from options of the scheduler before (Karras sigmas, timestep spacing).
    """
    from backend.tiny import diffusers_module

    try:
        class_name, options = SCHEDULER_CLASSES[name]
    except KeyError:
        known = ", ".join(SCHEDULER_CLASSES)
        raise BackendError(f"Unknown scheduler {name!r}; the known schedulers are {known}.") from None
    scheduler_class = getattr(diffusers_module(), class_name)
    try:
        scheduler: Scheduler = scheduler_class.from_config(base_config, **options)
    except ImportError as exc:
        # diffusers' placeholder for a class whose optional dependency is missing (lms needs scipy).
        raise BackendError(
            f"The {name} scheduler is not installed on this backend ({exc.__class__.__name__}); "
            "choose another scheduler, e.g. dpmpp."
        ) from exc
    scheduler.register_to_config(**{_MODEL_SCHEDULER_KEY: base_config})
    return scheduler


class DiffusionRunner:
    """A loaded pipeline that runs one call at a time for a batch of compatible requests."""

    def __init__(self, pipeline: StableDiffusionPipeline, model: str) -> None:
        self.pipeline = pipeline
        self.model = model
        self._lock = threading.Lock()
        self._base_scheduler_config = model_scheduler_config(pipeline)
        self._schedulers: dict[str, Scheduler] = {"dpmpp": pipeline.scheduler}
        self._image_to_image: StableDiffusionPipeline | None = None

    @classmethod
    def load(
        cls,
        model: str,
        device: str | None = None,
        *,
        compile_unet: bool = False,
        compile_cache_dir: Path | None = None,
        cache_dir: Path | None = None,
    ) -> DiffusionRunner:
        """Load ``model`` with :func:`load_pipeline`: seconds to minutes, so not on an event loop."""
        pipeline = load_pipeline(
            model,
            device,
            compile_unet=compile_unet,
            compile_cache_dir=compile_cache_dir,
            cache_dir=cache_dir,
        )
        return cls(pipeline, model)

    @property
    def device(self) -> str:
        return str(self.pipeline.device)

    @property
    def has_safety_checker(self) -> bool:
        return self.pipeline.safety_checker is not None

    @property
    def max_prompt_tokens(self) -> int:
        return int(self.pipeline.tokenizer.model_max_length)

    def prompt_tokens(self, text: str) -> int:
        """How many tokens the text encoder would see, start and end tokens included, before the cut."""
        return len(self.pipeline.tokenizer(text, truncation=False, verbose=False).input_ids)

    def prompt_truncated(self, text: str) -> bool:
        return self.prompt_tokens(text) > self.max_prompt_tokens

    def scheduler(self, name: str) -> Scheduler:
        """The scheduler of that name, built once per runner."""
        if name not in self._schedulers:
            self._schedulers[name] = make_scheduler(name, self._base_scheduler_config)
        return self._schedulers[name]

    def image_to_image_pipeline(self) -> StableDiffusionPipeline:
        """The img2img pipeline over the SAME loaded components: no second copy of the weights.

        Built on first use from the text pipeline's modules (UNet, VAE, text encoder, safety
        checker); only the small pipeline object is new.
        """
        if self._image_to_image is None:
            from backend.tiny import diffusers_module

            pipeline = diffusers_module().AutoPipelineForImage2Image.from_pipe(self.pipeline)
            pipeline.set_progress_bar_config(disable=True)
            self._image_to_image = pipeline
        return self._image_to_image

    def warmup(self, width: int = 512, height: int = 512) -> float:
        """Run a two-step image so the first user does not pay for compiling and allocations."""
        started = time.perf_counter()
        self.generate([ImageRequest(prompt="warm-up", width=width, height=height, steps=2, seed=0)])
        return time.perf_counter() - started

    def generate(
        self,
        requests: Sequence[ImageRequest],
        *,
        progress: StepCallback | None = None,
        cancel: CancelFlag | None = None,
    ) -> list[GenerationResult]:
        """Make every request's images in ONE pipeline call; one result per request, in order.

        The requests must share :func:`batch_key` and have their seed set. A request with an
        ``init_image`` runs img2img from that picture at its ``strength``: exactly
        ``request.denoise_steps`` steps, the last ones of the schedule. ``progress`` is called
        from this thread after each step; ``cancel`` is checked before the first step and after
        each one, and a set flag raises :class:`GenerationCancelled`. Blocking: run it in a
        worker thread. Calls are serialised, since a pipeline and its schedulers hold state.
        """
        import torch

        # 1. Check inputs
        if not requests:
            raise ValueError("generate() needs at least one request.")
        key = batch_key(requests[0])
        for request in requests:
            if batch_key(request) != key:
                raise ValueError(f"Requests in one batch must share {key}; got {batch_key(request)}.")
            if request.seed is None:
                raise ValueError("Every request needs its seed set before it reaches the pipeline.")
        is_cancelled = _cancel_check(cancel)

        with self._lock:
            started = time.perf_counter()
            image_to_image = key.strength is not None
            pipeline = self.image_to_image_pipeline() if image_to_image else self.pipeline
            scheduler = pipeline.scheduler = self.scheduler(key.scheduler)

            # 2. Lay the batch out image by image: prompts, negative prompts, pictures, one generator each
            prompts: list[str] = []
            negatives: list[str] = []
            init_images: list[Any] = []
            generators: list[torch.Generator] = []
            for request in requests:
                assert request.seed is not None
                init_image = _init_image(request) if image_to_image else None
                for i in range(request.num_images):
                    prompts.append(request.prompt)
                    negatives.append(request.negative_prompt)
                    init_images.append(init_image)
                    generators.append(torch.Generator("cpu").manual_seed(request.seed + i))
            truncated = [self.prompt_truncated(request.prompt) for request in requests]
            total_steps = requests[0].denoise_steps
            if image_to_image:
                call: dict[str, Any] = {
                    "image": init_images,
                    "strength": diffusers_strength(scheduler, key.steps, total_steps),
                }
            else:
                call = {"width": key.width, "height": key.height}

            # 3. Denoise, reporting each step and stopping between steps when cancelled. A step is
            #    a timestep: PNDM's warm-up runs the UNet twice on its first one, counted once.
            step_times: list[float] = []
            timesteps_seen: list[float] = []

            def on_step_end(
                pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
            ) -> dict[str, Any]:
                step_times.append(time.perf_counter())
                if not timesteps_seen or float(timestep) != timesteps_seen[-1]:
                    timesteps_seen.append(float(timestep))
                    if progress is not None:
                        progress(len(timesteps_seen), total_steps)
                if is_cancelled():
                    raise GenerationCancelled(len(timesteps_seen), total_steps)
                return callback_kwargs

            if is_cancelled():
                raise GenerationCancelled(0, total_steps)
            output = pipeline(
                prompt=prompts,
                negative_prompt=negatives,
                num_inference_steps=key.steps,
                guidance_scale=key.guidance,
                generator=generators,
                output_type="pil",
                callback_on_step_end=on_step_end,
                **call,
            )

            # 4. Drop what the safety checker flagged, encode the rest as PNG
            flags: list[bool] = list(output.nsfw_content_detected or [False] * len(output.images))
            pngs = [_png_bytes(image) for image in output.images]
            finished = time.perf_counter()

        # 5. One result per request, with the call's timings
        predict_time = finished - started
        denoise_time = (step_times[-1] - started) if step_times else predict_time
        timings = {
            "predict_time": predict_time,
            "denoise_time": denoise_time,
            "decode_time": finished - step_times[-1] if step_times else 0.0,
            "step_time": denoise_time / max(1, len(step_times)),
            "denoise_steps": float(len(timesteps_seen)),
            "batch_images": float(len(pngs)),
        }
        results: list[GenerationResult] = []
        offset = 0
        for request, was_truncated in zip(requests, truncated, strict=True):
            assert request.seed is not None
            images: list[bytes] = []
            seeds: list[int] = []
            for i in range(request.num_images):
                if not flags[offset + i]:
                    images.append(pngs[offset + i])
                    seeds.append(request.seed + i)
            offset += request.num_images
            results.append(
                GenerationResult(
                    images=images,
                    seeds=seeds,
                    model=self.model,
                    blocked=request.num_images - len(images),
                    prompt_truncated=was_truncated,
                    timings=dict(timings),
                )
            )
        return results


def _cancel_check(cancel: CancelFlag | None) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    return cancel


def _init_image(request: ImageRequest) -> Any:
    """The request's picture as an RGB PIL image; it must already have the output's size."""
    from PIL import Image

    assert request.init_image is not None
    with Image.open(io.BytesIO(request.init_image)) as opened:
        image = opened.convert("RGB")
    if image.size != (request.width, request.height):
        raise ValueError(
            f"The picture is {image.width}x{image.height}; the request is for "
            f"{request.width}x{request.height}, and its picture must be resized to that first."
        )
    return image


def _png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
