"""PNG checks shared by the tests and the fakes: the signature, the size from the IHDR chunk, a tiny image."""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height from the IHDR chunk; None when ``data`` does not start like a PNG."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG; fails the test when ``data`` is not one."""
    size = png_dimensions(data)
    assert size is not None, f"not a PNG: {data[:16]!r}"
    return size


def png_bytes(width: int = 3, height: int = 2) -> bytes:
    """A real, tiny RGB PNG."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + bytes([200, 100, 50]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
