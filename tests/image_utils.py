"""Images for the protocol tests: the tiny MoshiVis model's two test images, and bad input of every
kind each protocol must refuse with a typed error (the codes of assistant/images.py)."""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from PIL import Image
from server_utils import ServerAddress, start_server

MOSHIVIS_TINY = Path(__file__).parent / "data" / "moshivis_tiny"
IMAGE_A = (MOSHIVIS_TINY / "image_a.png").read_bytes()
IMAGE_B = (MOSHIVIS_TINY / "image_b.png").read_bytes()


@contextlib.contextmanager
def vision_server_running(*args: str, max_sessions: int = 2) -> Iterator[ServerAddress]:
    """`assistant serve` with the tiny MoshiVis model on the CPU (uncompiled), and `args`."""
    with start_server(
        "--backend",
        "moshi",
        "--model",
        str(MOSHIVIS_TINY),
        "--device",
        "cpu",
        "--no-compile",
        "--max-sessions",
        str(max_sessions),
        *args,
        startup_timeout_s=240,
    ) as address:
        yield address


def encoded(image: Image.Image, kind: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=kind, **options)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1 x 1 PNG whose header claims other dimensions: a decompression bomb, as it looks
    before decoding (a few bytes that promise billions of pixels)."""
    data = bytearray(encoded(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = bytearray(data[12:29])  # "IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


# (what it is, its bytes, the error code every protocol answers with)
BAD_IMAGES = [
    ("corrupt", encoded(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:60], "corrupt_image"),
    ("bomb", png_claiming(100_000, 100_000), "image_dimensions_too_large"),
    ("gif", encoded(Image.new("RGB", (8, 8)), "GIF"), "unsupported_image_type"),
    ("text", b"hello, this is not an image", "unsupported_image_type"),
]
# 1.5 MiB: more than a JSON message may be (1 MiB), refused unread.
OVERSIZED_IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * (6 * 1024)
