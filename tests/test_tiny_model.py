"""The built-in ``tiny`` checkpoint: a real diffusers folder, the real model's shape, built once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from backend.tiny import (
    LATENT_SCALE,
    MODEL_MAX_LENGTH,
    TINY_VERSION,
    VARIANTS,
    build_random_model,
    default_cache_dir,
    diffusers_module,
    tiny_model_path,
)


@pytest.fixture(scope="session")
def tiny_dir(models_dir: Path) -> Path:
    return tiny_model_path(models_dir)


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_dir: Path) -> Any:
    pipeline = diffusers_module().StableDiffusionPipeline.from_pretrained(tiny_dir)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_is_a_checkpoint_folder_of_safetensors(tiny_dir: Path) -> None:
    assert tiny_dir.name == f"tiny-v{TINY_VERSION}"
    for name in (
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "scheduler/scheduler_config.json",
    ):
        assert (tiny_dir / name).is_file(), name
    assert not list(tiny_dir.rglob("*.bin")), "no pickled weights"
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    assert index["requires_safety_checker"] is False


def test_loads_through_from_pretrained_with_the_real_models_shape(tiny_pipeline: Any) -> None:
    vae, unet = tiny_pipeline.vae, tiny_pipeline.unet
    assert len(vae.config.block_out_channels) == 4
    assert tiny_pipeline.vae_scale_factor == 8
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 512, 512)).latent_dist.mean
    assert tuple(latents.shape) == (1, 4, 64, 64)
    # Attention only at the small resolutions: none at the 64x64 and 32x32 latent levels.
    assert list(unet.config.down_block_types[:2]) == ["DownBlock2D", "DownBlock2D"]
    assert all("CrossAttn" in kind for kind in unet.config.down_block_types[2:])
    assert unet.config.cross_attention_dim == tiny_pipeline.text_encoder.config.hidden_size


def test_tokenizer_counts_words_like_clip_and_cuts_at_77(tiny_pipeline: Any) -> None:
    tokenizer = tiny_pipeline.tokenizer
    assert tokenizer.model_max_length == MODEL_MAX_LENGTH == 77
    ids = tokenizer("a lighthouse at dusk, oil painting").input_ids
    assert len(ids) == 2 + 7  # start, a, lighthouse, at, dusk, ",", oil, painting, end
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a lighthouse at dusk , oil painting"
    long_prompt = "a lighthouse at dusk " * 30
    assert len(tokenizer(long_prompt, verbose=False).input_ids) > 77
    cut = tokenizer(long_prompt, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(cut) == 77
    assert cut[-1] == tokenizer.eos_token_id
    # Words it has never seen are spelled out of smaller pieces, not lost.
    assert tokenizer.decode(tokenizer("zyxxy").input_ids, skip_special_tokens=True) == "zyxxy"


def test_the_same_seed_builds_the_same_weights(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_random_model(tmp_path / "again", variant="tiny", dtype=torch.float32)
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert sha256(again / name) == sha256(tiny_dir / name), name


def test_the_cache_is_reused(tiny_dir: Path, models_dir: Path) -> None:
    before = (tiny_dir / "model_index.json").stat().st_mtime_ns
    assert tiny_model_path(models_dir) == tiny_dir
    assert (tiny_dir / "model_index.json").stat().st_mtime_ns == before
    assert not [p for p in models_dir.iterdir() if p.name.startswith(".tiny-building-")]


def test_the_cache_folder_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGINE_CACHE_DIR", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("IMAGINE_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "imagine" / "models"


def test_losing_a_build_race_to_another_process_keeps_the_winners_folder(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While this process builds, another one renames its finished folder into place first."""
    import backend.tiny

    real_build = backend.tiny.build_random_model

    def build_and_lose_the_race(folder: Path, **options: Any) -> Path:
        winner = tmp_path / f".other-process-{os.getpid()}"
        shutil.copytree(tiny_dir, winner)
        winner.rename(tmp_path / tiny_dir.name)
        return real_build(folder, **options)

    monkeypatch.setattr(backend.tiny, "build_random_model", build_and_lose_the_race)
    assert tiny_model_path(tmp_path) == tmp_path / tiny_dir.name
    assert sorted(p.name for p in tmp_path.iterdir()) == [tiny_dir.name], "our half is cleaned up"
    name = "unet/diffusion_pytorch_model.safetensors"
    assert sha256(tmp_path / tiny_dir.name / name) == sha256(tiny_dir / name)


def test_sd15_is_the_published_architecture() -> None:
    """Parameter counts of Stable Diffusion 1.5's UNet, VAE and CLIP ViT-L/14 text encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel

    diffusers = diffusers_module()
    arch = VARIANTS["sd15"]
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**arch.unet)
        vae = diffusers.AutoencoderKL(**arch.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**arch.text_encoder))

    def count(module: Any) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(unet) == 859_520_964
    assert count(vae) == 83_653_863
    assert count(text_encoder) == 123_060_480


def test_an_unknown_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="choose one of tiny, sd15"):
        build_random_model(tmp_path, variant="sdxl")


def test_the_vae_gives_back_a_picture_as_its_8x8_block_means(tiny_pipeline: Any) -> None:
    """Set analytically, so img2img, upscale and vary can be judged by their pixels."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 256), torch.linspace(-1, 1, 256), indexing="ij")
    picture = torch.stack([x, y, x * y])[None]
    vae = tiny_pipeline.vae
    with torch.no_grad():
        latents = vae.encode(picture).latent_dist.sample() * vae.config.scaling_factor
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
    block_means = torch.nn.functional.avg_pool2d(picture, 8)
    assert torch.allclose(latents[:, :3] / LATENT_SCALE, block_means, atol=1e-3)
    assert torch.allclose(decoded, block_means.repeat_interleave(8, 2).repeat_interleave(8, 3), atol=1e-3)
    assert (decoded - picture).abs().mean() < 0.02  # about 2 levels of 255 on a smooth picture
