"""Pictures users send, and the image-action requests built from them: one sentence per bad picture."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from gateway.errors import InvalidRequest
from gateway.picture import (
    UPSCALE_STRENGTH,
    VARY_STRONG,
    VARY_SUBTLE,
    fit_size,
    read_picture,
    upscale,
    vary,
)
from gateway.request import DEFAULT_STRENGTH, parse_prompt
from tests.helpers.png import png_size


def encoded(size: tuple[int, int], fmt: str = "PNG", mode: str = "RGB", **save: object) -> bytes:
    out = io.BytesIO()
    colour = (200, 30, 30, 0) if mode == "RGBA" else (200, 30, 30)
    Image.new(mode, size, colour).save(out, format=fmt, **save)
    return out.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_are_read_as_rgb_png(fmt: str) -> None:
    picture = read_picture(encoded((300, 200), fmt))
    assert (picture.width, picture.height) == (300, 200) and png_size(picture.png) == (300, 200)


def test_transparency_is_flattened_on_white_and_exif_orientation_applied() -> None:
    picture = read_picture(encoded((10, 10), "PNG", mode="RGBA"))
    with Image.open(io.BytesIO(picture.png)) as image:
        assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: a phone photo taken upright
    rotated = read_picture(encoded((40, 20), "JPEG", exif=exif.tobytes()))
    assert (rotated.width, rotated.height) == (20, 40)


@pytest.mark.parametrize(
    ("data", "sentence"),
    [
        (b"GIF89a" + b"\0" * 100, "The picture must be a PNG, JPEG or WebP image."),
        (b"not a picture at all", "The picture must be a PNG, JPEG or WebP image."),
        (encoded((64, 64), "GIF"), "The picture must be a PNG, JPEG or WebP image."),
        (encoded((300, 300), "JPEG")[:400], "The picture is damaged or cut off; send it again."),
        (bomb_png(4097, 100), "The picture is 4097x100; the limit is 4096x4096."),
        (bomb_png(60000, 60000), "The picture claims more pixels than 4096x4096; send a smaller one."),
        (b"\x89PNG" + b"\0" * (10 * 2**20 + 1), "The picture is 10.0 MB; the limit is 10 MB."),
    ],
    ids=["gif-header", "text", "gif", "truncated", "too-wide", "bomb", "too-big"],
)
def test_a_bad_picture_is_one_sentence(data: bytes, sentence: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        read_picture(data)
    assert str(refused.value) == sentence


def test_an_image_prompt_keeps_the_pictures_shape_fitted_to_1024() -> None:
    request = parse_prompt("a fox in the snow", image=encoded((1600, 900), "JPEG"))
    assert (request.kind, request.width, request.height) == ("image", 1024, 576)
    assert request.strength == DEFAULT_STRENGTH and png_size(request.init_image or b"") == (1024, 576)
    assert request.denoise_steps == int(25 * DEFAULT_STRENGTH)
    sized = parse_prompt("a fox --ar 1:1 --strength 0.05", image=encoded((1600, 900), "JPEG"))
    assert (sized.width, sized.height, sized.strength, sized.denoise_steps) == (512, 512, 0.05, 1)
    assert "init_image" not in sized.to_json()
    with pytest.raises(InvalidRequest, match="attach a picture to use it"):
        parse_prompt("a fox --strength 0.5")
    with pytest.raises(InvalidRequest, match=r"--strength must be a number from 0\.05 to 1; got 2"):
        parse_prompt("a fox --strength 2", image=encoded((64, 64)))


def test_upscale_doubles_each_side_up_to_2048_and_vary_keeps_the_size() -> None:
    source = parse_prompt("a lighthouse --seed 7")
    up = upscale(source, encoded((512, 512)), seed=7)
    assert (up.kind, up.width, up.height, up.seed, up.strength) == (
        "upscale",
        1024,
        1024,
        7,
        UPSCALE_STRENGTH,
    )
    assert png_size(up.init_image or b"") == (1024, 1024)
    wide = upscale(source, encoded((1024, 576)), seed=7)
    assert (wide.width, wide.height) == (2048, 1152)
    subtle, strong = vary(source, encoded((704, 384))), vary(source, encoded((704, 384)), strong=True)
    assert (subtle.width, subtle.height, subtle.seed, subtle.strength) == (704, 384, None, VARY_SUBTLE)
    assert strong.strength == VARY_STRONG
    assert fit_size(300, 3000) == (256, 1024)


def test_a_button_names_its_action_and_image() -> None:
    from gateway.picture import action_request

    source = parse_prompt("a lighthouse --seed 40 --n 4")
    second = action_request(source, encoded((512, 512)), "upscale", 2)
    assert (second.kind, second.seed, second.num_images) == ("upscale", 42, 1)
    assert action_request(source, encoded((512, 512)), "vary_strong", 0).strength == VARY_STRONG
    with pytest.raises(InvalidRequest, match="Unknown image action"):
        action_request(source, encoded((512, 512)), "zoom", 0)


def test_no_more_than_two_pictures_are_decoded_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory stays bounded when many pictures arrive together, whichever fronts they came from."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from gateway import picture

    decode, running, most = picture._decode, [0], [0]
    lock = threading.Lock()

    def counted(data: bytes) -> picture.Picture:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)  # a slow decode, so the threads overlap
        try:
            return decode(data)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(picture, "_decode", counted)
    with ThreadPoolExecutor(8) as pool:
        pictures = list(pool.map(read_picture, [encoded((64, 64))] * 8))
    assert len(pictures) == 8 and most[0] == picture.DECODES_AT_ONCE
