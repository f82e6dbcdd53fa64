"""Stable Diffusion checkpoints with random weights, built in code: no Hub, no download.

The ``tiny`` model is what tests and offline demos run: real diffusers components (UNet, VAE,
CLIP text encoder and tokenizer, scheduler) with tiny widths, saved once as an ordinary
checkpoint folder and then loaded through the same ``from_pretrained`` path as a real model,
so everything between the prompt and the PNG is the real code. It keeps the real model's shape
where the shape sets the cost: a four-block VAE (512x512 pixels are 64x64 latents) and UNet
attention only at the small resolutions. Its UNet has random weights, so what it makes from a
text prompt is noise; its VAE is set analytically (see :func:`set_round_trip_vae`) so a picture
goes in and comes back out, and img2img, upscale and vary can be checked pixel by pixel.

``sd15`` is the full Stable Diffusion 1.5 architecture from its published configs, with random
weights: for load-time and speed benchmarks on a GPU without fetching 4 GB.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import shutil
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: Bump when the tiny model's architecture, weights or tokenizer change: older caches are then rebuilt.
TINY_VERSION = 2
TINY_SEED = 20240601
MODEL_MAX_LENGTH = 77
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
_BUILD_LOCK = threading.Lock()

# The SD 1.x scheduler as published (runwayml/stable-diffusion-v1-5 scheduler_config.json).
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}

# Stable Diffusion 1.5's unet/config.json.
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

# Stable Diffusion 1.5's vae/config.json.
SD15_VAE_CONFIG: dict[str, Any] = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}

# The text half of openai/clip-vit-large-patch14, as in Stable Diffusion 1.5's text_encoder/config.json.
SD15_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": MODEL_MAX_LENGTH,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
}

# Tiny widths, real shape: four VAE blocks (8x), four UNet levels with attention only at the
# two smallest (16x16 and 8x8 latents at 512 px) and in the middle block.
TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "block_out_channels": (16, 32, 32, 32),
    "layers_per_block": 1,
    "act_fn": "silu",
    "norm_num_groups": 8,
    "norm_eps": 1e-5,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
}

TINY_VAE_CONFIG: dict[str, Any] = {
    **SD15_VAE_CONFIG,
    "block_out_channels": (8, 16, 16, 16),
    "layers_per_block": 1,
    "norm_num_groups": 4,
}

TINY_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MODEL_MAX_LENGTH,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


@dataclass(frozen=True)
class Architecture:
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    #: A VAE that round-trips pictures (:func:`set_round_trip_vae`) instead of random weights.
    round_trip_vae: bool = False


VARIANTS: dict[str, Architecture] = {
    "tiny": Architecture(TINY_UNET_CONFIG, TINY_VAE_CONFIG, TINY_TEXT_ENCODER_CONFIG, round_trip_vae=True),
    "sd15": Architecture(SD15_UNET_CONFIG, SD15_VAE_CONFIG, SD15_TEXT_ENCODER_CONFIG),
}

# Words the generated BPE vocabulary learns as whole tokens, so a prompt costs about as many
# tokens as with the real CLIP vocabulary (about one per common word) and the 77-token limit
# cuts prompts of about the same length.
_WORDS = """
a an the of in on at to with and or by from for as is under over into near through behind above
below beside around between before after during without very highly ultra extremely
portrait landscape photo photograph painting drawing sketch illustration render art artwork
oil watercolor acrylic digital pencil ink charcoal pastel concept anime cartoon comic
style styled detailed intricate realistic photorealistic hyperrealistic cinematic dramatic
lighting light shadow shadows sunlight moonlight dusk dawn sunset sunrise night day morning
evening golden hour foggy misty rainy snowy stormy cloudy clear sky skies cloud clouds rain
snow storm fog mist sun moon star stars galaxy space planet nebula aurora
lighthouse castle city street house tower bridge village forest mountain mountains river lake
sea ocean beach island desert valley field garden jungle cave waterfall volcano canyon
cat dog horse bird fox wolf lion tiger dragon owl fish whale bear deer rabbit butterfly
man woman girl boy child old young king queen knight wizard witch robot astronaut warrior
face eyes hair hands smiling standing sitting walking flying running wearing holding
red orange yellow green blue purple pink black white gray grey brown gold silver colorful
vibrant pastel dark bright neon soft warm cold glowing shiny rusty ancient futuristic
modern vintage retro cyberpunk steampunk fantasy medieval gothic baroque minimalist
surreal abstract epic beautiful cute scary majestic peaceful lonely huge tiny small
large tall long wide deep sharp focus bokeh depth field wide-angle close-up macro lens
camera mm canon nikon sony film grain kodak polaroid studio octane unreal engine
trending artstation deviantart behance masterpiece quality best resolution 4k 8k hd uhd
by greg rutkowski alphonse mucha van gogh monet da vinci studio ghibli pixar disney
text watermark signature blurry ugly deformed bad anatomy extra fingers low lowres
jpeg artifacts cropped worst duplicate mutated disfigured
"""


def default_cache_dir() -> Path:
    """``$IMAGINE_CACHE_DIR``, else ``~/.cache/imagine/models``."""
    configured = os.environ.get("IMAGINE_CACHE_DIR", "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "imagine" / "models"


def tiny_model_path(cache_dir: Path | None = None) -> Path:
    """The folder of the ``tiny`` checkpoint, built on first use.

    It is built in a temporary folder beside the final one and renamed into place, so a
    reader never sees half a checkpoint and two processes racing to build it both end up
    with the same complete folder.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / f"tiny-v{TINY_VERSION}"
    if (final / "model_index.json").is_file():
        return final
    # Threads of one process share torch's random generator, so they build one at a time.
    with _BUILD_LOCK:
        if (final / "model_index.json").is_file():
            return final
        root.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".tiny-building-", dir=root))
        try:
            build_random_model(building, variant="tiny", dtype=torch.float32)
            try:
                building.rename(final)
            except OSError:
                # Another process got there first; its folder is as good as ours.
                if not (final / "model_index.json").is_file():
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return final


def build_random_model(
    folder: Path | str,
    variant: str = "sd15",
    dtype: torch.dtype = torch.float16,
    *,
    seed: int = TINY_SEED,
) -> Path:
    """Write a Stable Diffusion checkpoint with random weights to ``folder`` (safetensors).

    ``variant`` is ``"sd15"`` (the full 1.5 architecture: about 1.1 billion parameters, 2 GB
    in fp16) or ``"tiny"``. The same seed gives the same weights. The folder loads with
    ``StableDiffusionPipeline.from_pretrained(folder)``; it has no safety checker.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    diffusers = diffusers_module()

    try:
        arch = VARIANTS[variant]
    except KeyError:
        raise ValueError(f"Unknown model variant {variant!r}; choose one of {', '.join(VARIANTS)}.") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    # 1. The tokenizer: a byte-level BPE vocabulary generated here, in CLIP's file format.
    tokenizer_dir = folder / "tokenizer"
    vocab = write_tokenizer_files(tokenizer_dir)
    tokenizer = CLIPTokenizer(
        vocab=str(tokenizer_dir / "vocab.json"),
        merges=str(tokenizer_dir / "merges.txt"),
        model_max_length=MODEL_MAX_LENGTH,
    )

    # 2. The networks, with weights drawn from a fixed seed without touching the global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel(**arch.unet)
        vae = diffusers.AutoencoderKL(**arch.vae)
        text_config = CLIPTextConfig(
            **{"vocab_size": len(vocab), **arch.text_encoder},
            bos_token_id=vocab[BOS_TOKEN],
            eos_token_id=vocab[EOS_TOKEN],
            pad_token_id=vocab[EOS_TOKEN],
        )
        text_encoder: Any = CLIPTextModel(text_config)
    if arch.round_trip_vae:
        set_round_trip_vae(vae)
    if dtype != torch.float32:
        unet.to(dtype)
        vae.to(dtype)
        text_encoder.to(dtype)

    # 3. Save as any published checkpoint is laid out, model_index.json included.
    pipeline = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=diffusers.PNDMScheduler.from_config(SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


#: What the UNet sees of a picture: latents are ``LATENT_SCALE`` x the 8x8 block means of its RGB
#: values in [-1, 1]. Bigger than SD's (about 1) so that the noise a random UNet cannot remove
#: stays small against the picture at upscale and vary strengths.
LATENT_SCALE = 4.0
#: The level of the signal entering the VAE's last GroupNorms: its variance is then far below the
#: norm's epsilon, which makes the norm a fixed scale instead of dividing by the picture's spread.
_NORM_INPUT_LEVEL = 3e-5


@torch.no_grad()
def set_round_trip_vae(vae: Any) -> None:
    """Set a four-block ``AutoencoderKL`` to encode 8x8 block means and decode them back, exactly.

    Set analytically rather than trained, so the weights need no time and no randomness: every
    residual branch (resnet ``conv2``, attention ``to_out``) is zero, so each block passes its
    input through; a 1x1 shortcut or a quant conv is the identity; each downsampler averages 2x2
    pixels (three of them: 8x8 blocks) and each upsampler repeats them. The one non-linear
    stage on the path, ``GroupNorm -> SiLU`` before each ``conv_out``, is made linear: each
    colour travels as the pair (+v, -v), so every group has mean zero; v is so small that the
    group's variance is negligible beside the norm's epsilon (a fixed divisor); and ``conv_out``
    takes ``silu(y) - silu(-y)``, which is ``y`` exactly. Latent channels 0-2 carry R, G and B,
    channel 3 is zero, and the log-variance is the minimum, so sampling is the mean.
    A decoded picture is the input's 8x8 block means (blocky, not blurred), accurate to about
    one level of 255.
    """
    for parameter in vae.parameters():
        parameter.zero_()
    for module in vae.modules():
        if isinstance(module, torch.nn.GroupNorm) and module.weight is not None:
            module.weight.fill_(1.0)
    for name, module in vae.named_modules():
        if not isinstance(module, torch.nn.Conv2d):
            continue
        if name.endswith(("conv_shortcut", "quant_conv")) or ".upsamplers." in name:
            _set_identity(module)
        elif ".downsamplers." in name:
            # A stride-2 3x3 conv over a right/bottom-padded input: its top-left 2x2 taps average.
            for channel in range(module.out_channels):
                module.weight[channel, channel, :2, :2] = 0.25
    encoder_gain = _NORM_INPUT_LEVEL / vae.encoder.conv_norm_out.eps**0.5
    decoder_gain = _NORM_INPUT_LEVEL / vae.decoder.conv_norm_out.eps**0.5
    raw_latent_scale = LATENT_SCALE / vae.config.scaling_factor
    encoder, decoder = vae.encoder, vae.decoder
    for colour in range(3):
        plus, minus = 2 * colour, 2 * colour + 1
        encoder.conv_in.weight[plus, colour, 1, 1] = _NORM_INPUT_LEVEL
        encoder.conv_in.weight[minus, colour, 1, 1] = -_NORM_INPUT_LEVEL
        encoder.conv_out.weight[colour, plus, 1, 1] = raw_latent_scale / encoder_gain
        encoder.conv_out.weight[colour, minus, 1, 1] = -raw_latent_scale / encoder_gain
        decoder.conv_in.weight[plus, colour, 1, 1] = _NORM_INPUT_LEVEL / raw_latent_scale
        decoder.conv_in.weight[minus, colour, 1, 1] = -_NORM_INPUT_LEVEL / raw_latent_scale
        decoder.conv_out.weight[colour, plus, 1, 1] = 1 / decoder_gain
        decoder.conv_out.weight[colour, minus, 1, 1] = -1 / decoder_gain
    latent_channels = vae.config.latent_channels
    encoder.conv_out.bias[latent_channels:] = -30.0  # diffusers' floor of the log-variance


def _set_identity(conv: torch.nn.Conv2d) -> None:
    centre = conv.kernel_size[0] // 2
    for channel in range(min(conv.in_channels, conv.out_channels)):
        conv.weight[channel, channel, centre, centre] = 1.0


def diffusers_module() -> Any:
    """diffusers, typed as ``Any``: its components are registered at run time, out of mypy's sight.

    Its and transformers' loading bars and optional-dependency notices are turned off: a worker's
    log should say what the worker did, not how many weight files it read.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    module = importlib.import_module("diffusers")
    module.utils.logging.disable_progress_bar()
    importlib.import_module("transformers").utils.logging.disable_progress_bar()
    return module


def write_tokenizer_files(folder: Path) -> dict[str, int]:
    """Write ``vocab.json`` and ``merges.txt`` of a generated byte-level BPE; return the vocabulary.

    The layout is CLIP's: the 256 byte symbols, the same with the end-of-word mark ``</w>``,
    one token per merge in merge order, then the start and end tokens (the end token has the
    highest id, as in CLIP, where the text encoder pools at the highest id).
    """
    merges = _learn_merges(sorted(set(_WORDS.split())))
    byte_symbols = list(_bytes_to_unicode().values())
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    vocab: dict[str, int] = {}
    for token in [*tokens, BOS_TOKEN, EOS_TOKEN]:
        vocab.setdefault(token, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab


def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair encoding learned on ``words`` until each is one token; ties break by name."""
    to_unicode = _bytes_to_unicode()
    split: list[list[str]] = []
    for word in words:
        symbols = [to_unicode[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        split.append(symbols)
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols in split:
            pairs.update(itertools.pairwise(symbols))
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for symbols in split:
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
                i += 1


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's map of the 256 bytes to printable characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}
