"""The real diffusers pipeline with the tiny model: seeds, batches, sizes, progress, cancellation."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from backend.models import download_model
from backend.pipeline import (
    SCHEDULER_CLASSES,
    DiffusionRunner,
    GenerationCancelled,
    ModelUnavailable,
    batch_key,
    load_pipeline,
)
from backend.tiny import tiny_model_path
from gateway.request import SCHEDULERS, ImageRequest
from tests.helpers.torch_threads import one_torch_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def runner(models_dir: Path) -> DiffusionRunner:
    return DiffusionRunner.load("tiny", "cpu", cache_dir=models_dir)


def request(prompt: str = "a lighthouse at dusk", **fields: Any) -> ImageRequest:
    fields = {"width": 256, "height": 256, "steps": 2, "seed": 42, **fields}
    return ImageRequest(prompt=prompt, **fields)


def pixels(png: bytes) -> Any:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


def assert_same_image(a: bytes, b: bytes) -> None:
    """The same seed made it; batched and alone it is the same image.

    Not bit for bit: a matrix product over a batch of 4 sums in another order than over a batch
    of 2 (MKL here, cuBLAS on a GPU), which moves a few values across a rounding boundary by one
    level out of 255. The noise itself is identical (one generator per image).
    """
    diff = np.abs(pixels(a) - pixels(b))
    assert diff.max() <= 1, diff.max()
    assert (diff > 0).mean() < 0.005, (diff > 0).mean()


def test_loads_tiny_with_dpm_solver_on_cpu_in_fp32(runner: DiffusionRunner) -> None:
    assert runner.device == "cpu"
    assert runner.pipeline.unet.dtype == torch.float32
    assert type(runner.pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert runner.pipeline.scheduler.config.algorithm_type == "dpmsolver++"
    assert not runner.has_safety_checker


def test_the_same_seed_gives_the_same_pixels(runner: DiffusionRunner) -> None:
    (first,) = runner.generate([request()])
    (second,) = runner.generate([request()])
    assert first.seeds == second.seeds == [42]
    assert first.images == second.images
    assert first.model == "tiny"


def test_other_seeds_give_other_pixels(runner: DiffusionRunner) -> None:
    (a,) = runner.generate([request(seed=1)])
    (b,) = runner.generate([request(seed=2)])
    assert np.abs(pixels(a.images[0]) - pixels(b.images[0])).mean() > 5


def test_a_batch_makes_the_same_images_as_each_request_alone(runner: DiffusionRunner) -> None:
    fox = request("a red fox", seed=11)
    pair = request("a lighthouse at dusk", seed=20, num_images=2, negative_prompt="text")
    assert batch_key(fox) == batch_key(pair)
    together = runner.generate([fox, pair])
    (fox_alone,) = runner.generate([fox])
    (pair_alone,) = runner.generate([pair])
    assert [r.seeds for r in together] == [[11], [20, 21]]
    assert len(together[0].images) == 1 and len(together[1].images) == 2
    assert_same_image(together[0].images[0], fox_alone.images[0])
    for batched, alone in zip(together[1].images, pair_alone.images, strict=True):
        assert_same_image(batched, alone)
    # Image i of a request is the image of seed + i: the second of the pair is seed 21 alone.
    (seed_21,) = runner.generate([request("a lighthouse at dusk", seed=21, negative_prompt="text")])
    assert_same_image(pair_alone.images[1], seed_21.images[0])


def test_requests_that_cannot_share_a_call_are_refused(runner: DiffusionRunner) -> None:
    with pytest.raises(ValueError, match="must share"):
        runner.generate([request(), request(steps=3)])
    with pytest.raises(ValueError, match="seed"):
        runner.generate([request(seed=None)])


def test_the_requested_size_is_honoured(runner: DiffusionRunner) -> None:
    (result,) = runner.generate([request(width=320, height=256)])
    with Image.open(io.BytesIO(result.images[0])) as image:
        assert image.size == (320, 256)


def test_progress_is_reported_once_per_step_in_order(runner: DiffusionRunner) -> None:
    seen: list[tuple[int, int]] = []
    (result,) = runner.generate([request(steps=4)], progress=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.timings["predict_time"] >= result.timings["denoise_time"] > 0
    assert result.timings["step_time"] > 0


def test_cancelling_stops_at_the_end_of_the_current_step(runner: DiffusionRunner) -> None:
    cancel = threading.Event()
    seen: list[int] = []

    def progress(step: int, total: int) -> None:
        seen.append(step)
        if step == 2:
            cancel.set()

    with pytest.raises(GenerationCancelled, match="after step 2 of 10") as info:
        runner.generate([request(steps=10)], progress=progress, cancel=cancel)
    assert (info.value.step, info.value.total) == (2, 10)
    assert seen == [1, 2]
    # A flag set before the call stops it before the first step; the runner still works after.
    with pytest.raises(GenerationCancelled, match="after step 0"):
        runner.generate([request()], progress=lambda s, t: seen.append(s), cancel=lambda: True)
    assert seen == [1, 2]
    assert runner.generate([request()])[0].images


def test_a_prompt_over_77_tokens_is_reported_as_cut(runner: DiffusionRunner) -> None:
    long_prompt = "a lighthouse at dusk on a cliff, " * 12
    assert runner.prompt_tokens(long_prompt) > runner.max_prompt_tokens == 77
    short, long = runner.generate([request(), request(long_prompt)])
    assert not short.prompt_truncated
    assert long.prompt_truncated
    assert long.images


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_runs_or_says_why_not(runner: DiffusionRunner, name: str) -> None:
    assert set(SCHEDULER_CLASSES) == set(SCHEDULERS)
    (result,) = runner.generate([request(scheduler=name)])
    assert result.images


def test_switching_schedulers_leaves_no_state_behind(runner: DiffusionRunner) -> None:
    (before,) = runner.generate([request(steps=3)])
    runner.generate([request(steps=5, scheduler="euler_a")])
    runner.generate([request(steps=2, scheduler="ddim")])
    (after,) = runner.generate([request(steps=3)])
    assert before.images == after.images
    # Each scheduler starts from the model's own noise schedule, not from the one before it.
    assert runner.scheduler("euler").config.use_karras_sigmas is False
    assert runner.scheduler("euler") is runner.scheduler("euler")


class FlagEverySecondImage:
    """A stand-in for the safety checker: it flags images 1, 3, ... of the call, as the real one does."""

    def __call__(self, images: Any, clip_input: Any) -> tuple[Any, list[bool]]:
        flags = [i % 2 == 1 for i in range(len(images))]
        for i, flagged in enumerate(flags):
            if flagged:
                images[i] = 0  # the real checker blacks them out
        return images, flags


class Features:
    def __init__(self, count: int) -> None:
        self.pixel_values = torch.zeros(count, 3, 8, 8)

    def to(self, device: Any) -> Features:
        return self


class FeatureExtractor:
    def __call__(self, images: list[Any], return_tensors: str) -> Features:
        return Features(len(images))


def test_images_the_safety_checker_flags_are_dropped_and_counted(models_dir: Path) -> None:
    pipeline = load_pipeline("tiny", "cpu", cache_dir=models_dir)
    pipeline.safety_checker = FlagEverySecondImage()
    pipeline.feature_extractor = FeatureExtractor()
    checked = DiffusionRunner(pipeline, "tiny")
    assert checked.has_safety_checker
    three, one = checked.generate([request(num_images=3, seed=5), request(seed=9)])
    # Flags over the call: images 0, 1, 2 are the first request's, image 3 the second's.
    assert (three.seeds, three.blocked, len(three.images)) == ([5, 7], 1, 2)
    assert (one.seeds, one.blocked, one.images) == ([], 1, [])


def test_download_model_says_in_one_sentence_that_the_hub_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import diffusers.utils.constants
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(diffusers.utils.constants, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(ModelUnavailable) as info:
        download_model("CompVis/stable-diffusion-v1-4", tmp_path)
    reason = info.value.reason
    assert "'CompVis/stable-diffusion-v1-4'" in reason
    assert "Hugging Face Hub could not be reached" in reason
    assert "imagine download-model" in reason and "IMAGINE_MODEL=tiny" in reason
    assert "\n" not in reason and reason.count(". ") == 0 and reason.endswith(".")
    with pytest.raises(ModelUnavailable, match="Hub could not be reached"):
        load_pipeline("CompVis/stable-diffusion-v1-4", "cpu")


def test_download_model_builds_tiny_and_checks_folders(models_dir: Path, tmp_path: Path) -> None:
    assert download_model("tiny", models_dir) == tiny_model_path(models_dir)
    folder = tiny_model_path(models_dir)
    assert download_model(str(folder)) == folder
    with pytest.raises(ModelUnavailable, match=r"no model_index\.json"):
        download_model(str(tmp_path))
    with pytest.raises(ModelUnavailable, match=r"no model_index\.json"):
        load_pipeline(str(tmp_path), "cpu")
    with pytest.raises(ModelUnavailable, match="neither a local model folder nor a Hugging Face model id"):
        load_pipeline(str(tmp_path / "no" / "such" / "folder"), "cpu")


# Image actions: img2img from the same loaded components.


def picture(size: int, seed: int) -> Image.Image:
    """A smooth picture with a few discs: something an 8x8-block VAE keeps, unlike noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    waves = rng.uniform(0, 1, (3, 3))
    channels = [127 + 120 * np.sin(2 * np.pi * (2 * a * x + 2 * b * y + c)) for a, b, c in waves]
    image = Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        cx, cy, r = (int(v) for v in rng.integers(0, size, 3))
        r = r // 4 + size // 16
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_request(
    source: Image.Image, kind: str = "vary", strength: float = 0.35, **fields: Any
) -> ImageRequest:
    fields = {"width": source.width, "height": source.height, "steps": 10, "seed": 3, **fields}
    return request(kind=kind, strength=strength, init_image=png_of(source), **fields)


def distance(a: bytes | Image.Image, b: bytes | Image.Image) -> float:
    """Mean absolute difference per channel, in levels of 255."""
    first = pixels(a) if isinstance(a, bytes) else np.asarray(a.convert("RGB")).astype(int)
    second = pixels(b) if isinstance(b, bytes) else np.asarray(b.convert("RGB")).astype(int)
    return float(np.abs(first - second).mean())


@pytest.fixture(scope="module")
def source() -> Image.Image:
    return picture(256, seed=1)


def test_img2img_runs_on_the_same_loaded_weights(runner: DiffusionRunner) -> None:
    image_to_image = runner.image_to_image_pipeline()
    assert type(image_to_image).__name__ == "StableDiffusionImg2ImgPipeline"
    for name in ("unet", "vae", "text_encoder", "tokenizer", "safety_checker"):
        assert getattr(image_to_image, name) is getattr(runner.pipeline, name), name
    assert runner.image_to_image_pipeline() is image_to_image


@pytest.mark.parametrize(("steps", "strength", "denoise_steps"), [(10, 0.3, 3), (25, 0.7, 17), (10, 0.05, 1)])
def test_img2img_reports_exactly_the_steps_the_request_promised(
    runner: DiffusionRunner, source: Image.Image, steps: int, strength: float, denoise_steps: int
) -> None:
    job = image_request(source, steps=steps, strength=strength)
    assert job.denoise_steps == denoise_steps
    seen: list[tuple[int, int]] = []
    (result,) = runner.generate([job], progress=lambda step, total: seen.append((step, total)))
    assert seen == [(step, denoise_steps) for step in range(1, denoise_steps + 1)]
    with Image.open(io.BytesIO(result.images[0])) as image:
        assert image.size == source.size


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_runs_img2img_for_the_promised_steps(
    runner: DiffusionRunner, source: Image.Image, name: str
) -> None:
    job = image_request(source, steps=6, strength=0.5, scheduler=name)
    seen: list[int] = []
    (result,) = runner.generate([job], progress=lambda step, total: seen.append(total))
    assert result.images
    assert job.denoise_steps == 3
    assert len(seen) == 3 and set(seen) == {3}


def test_cancelling_img2img_stops_at_the_end_of_the_current_step(
    runner: DiffusionRunner, source: Image.Image
) -> None:
    cancel = threading.Event()
    seen: list[int] = []

    def progress(step: int, total: int) -> None:
        seen.append(step)
        if step == 2:
            cancel.set()

    job = image_request(source, steps=20, strength=0.5)
    with pytest.raises(GenerationCancelled, match="after step 2 of 10"):
        runner.generate([job], progress=progress, cancel=cancel)
    assert seen == [1, 2]
    with pytest.raises(GenerationCancelled, match="after step 0 of 10"):
        runner.generate([job], cancel=lambda: True)


def test_text_and_img2img_never_share_a_call(runner: DiffusionRunner, source: Image.Image) -> None:
    text = request(steps=10, seed=3)
    vary, strong = image_request(source), image_request(source, strength=0.7)
    assert len({batch_key(text), batch_key(vary), batch_key(strong)}) == 3
    assert batch_key(vary) != batch_key(image_request(source, kind="image"))
    for mixed in ([text, vary], [vary, strong]):
        with pytest.raises(ValueError, match="must share"):
            runner.generate(mixed)


def test_an_img2img_batch_makes_the_same_images_as_each_request_alone(
    runner: DiffusionRunner, source: Image.Image
) -> None:
    pair = image_request(source, seed=20, num_images=2)
    other = image_request(picture(256, seed=5), seed=11)
    together = runner.generate([pair, other])
    assert [r.seeds for r in together] == [[20, 21], [11]]
    (pair_alone,) = runner.generate([pair])
    (other_alone,) = runner.generate([other])
    for batched, alone in zip(
        [*together[0].images, *together[1].images], [*pair_alone.images, *other_alone.images], strict=True
    ):
        assert_same_image(batched, alone)
    assert distance(pair_alone.images[0], pair_alone.images[1]) > 0  # seeds 20 and 21 differ


def test_a_picture_not_at_the_output_size_is_refused(runner: DiffusionRunner, source: Image.Image) -> None:
    job = image_request(source, width=320)
    with pytest.raises(ValueError, match=r"The picture is 256x256; the request is for 320x256"):
        runner.generate([job])


def test_the_safety_checker_judges_img2img_too(models_dir: Path, source: Image.Image) -> None:
    pipeline = load_pipeline("tiny", "cpu", cache_dir=models_dir)
    pipeline.safety_checker = FlagEverySecondImage()
    pipeline.feature_extractor = FeatureExtractor()
    checked = DiffusionRunner(pipeline, "tiny")
    (result,) = checked.generate([image_request(source, num_images=2, seed=5, steps=4)])
    assert (result.seeds, result.blocked, len(result.images)) == ([5], 1, 1)


def test_an_image_prompt_at_strength_005_stays_close_to_its_picture(
    runner: DiffusionRunner, source: Image.Image
) -> None:
    (result,) = runner.generate([image_request(source, kind="image", strength=0.05)])
    unrelated = distance(source, picture(256, seed=2))
    assert unrelated > 60
    assert distance(result.images[0], source) < 10 < unrelated / 8


def test_vary_subtle_stays_closer_to_its_source_than_vary_strong(
    runner: DiffusionRunner, source: Image.Image
) -> None:
    (subtle,) = runner.generate([image_request(source, strength=0.35, seed=8)])
    (strong,) = runner.generate([image_request(source, strength=0.7, seed=8)])
    subtle_distance, strong_distance = distance(subtle.images[0], source), distance(strong.images[0], source)
    assert subtle_distance < 12
    assert strong_distance > 2 * subtle_distance


@pytest.mark.slow
def test_upscale_to_1024_looks_like_its_512_source_when_shrunk_back(runner: DiffusionRunner) -> None:
    source = picture(512, seed=1)
    resized = source.resize((1024, 1024), Image.Resampling.LANCZOS)
    (result,) = runner.generate([image_request(resized, kind="upscale", strength=0.3)])
    with Image.open(io.BytesIO(result.images[0])) as upscaled:
        assert upscaled.size == (1024, 1024)
        shrunk = upscaled.convert("RGB").resize((512, 512), Image.Resampling.LANCZOS)
    unrelated = distance(source, picture(512, seed=2))
    assert distance(shrunk, source) < 10 < unrelated / 5
