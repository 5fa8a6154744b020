"""Images from users: validation with typed errors, and the encoder's pixels as Kyutai's server makes them."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from assistant.images import (
    CorruptImage,
    ImageDimensionsTooLarge,
    ImageError,
    ImagesNotSupported,
    ImageTooLarge,
    UnsupportedImageType,
    decode_image,
    encoder_pixels,
    prepare_image,
)

DATA = Path(__file__).parent / "data" / "moshivis_tiny"


def encoded(image: Image.Image, kind: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=kind, **options)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1 x 1 PNG whose header claims other dimensions (what a decompression bomb looks like
    before decoding: a few bytes that promise billions of pixels)."""
    data = bytearray(encoded(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = bytearray(data[12:29])  # "IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP"])
def test_the_accepted_types_decode_to_rgb(kind):
    picture = Image.new("RGB", (64, 40), (200, 40, 10))
    rgb, found = decode_image(encoded(picture, kind))
    assert found == kind and rgb.shape == (40, 64, 3) and rgb.dtype == np.uint8
    assert abs(int(rgb[20, 32, 0]) - 200) < 8


def test_alpha_grey_and_palette_images_become_rgb():
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    rgb, _ = decode_image(encoded(rgba, "PNG"))
    assert rgb.shape == (8, 8, 3) and tuple(rgb[0, 0]) == (10, 20, 30)  # alpha dropped, not composited
    grey, _ = decode_image(encoded(Image.new("L", (4, 4), 77), "PNG"))
    assert tuple(grey[0, 0]) == (77, 77, 77)
    palette, _ = decode_image(encoded(Image.new("P", (4, 4), 3), "PNG"))
    assert palette.shape == (4, 4, 3)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", CorruptImage),
        (b"hello, this is not an image", UnsupportedImageType),
        (encoded(Image.new("RGB", (8, 8)), "GIF"), UnsupportedImageType),
        (encoded(Image.new("RGB", (8, 8)), "BMP"), UnsupportedImageType),
        (encoded(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:60], CorruptImage),  # truncated
        (png_claiming(40_000, 40_000), ImageDimensionsTooLarge),
        (png_claiming(20_000, 10), ImageDimensionsTooLarge),  # one side too long
        (png_claiming(7_000, 7_000), ImageDimensionsTooLarge),  # 49 million pixels
    ],
)
def test_bad_images_get_typed_errors(data, error):
    with pytest.raises(error) as raised:
        decode_image(data)
    assert isinstance(raised.value, ImageError) and isinstance(raised.value, ValueError)
    assert raised.value.code and str(raised.value)


def test_a_corrupt_jpeg_body_is_a_corrupt_image():
    data = bytearray(encoded(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG"))
    with pytest.raises(CorruptImage):
        decode_image(bytes(data[: len(data) // 3]))


def test_an_image_over_the_byte_limit_is_refused_before_decoding():
    data = encoded(Image.new("RGB", (16, 16)), "PNG")
    with pytest.raises(ImageTooLarge, match=f"{len(data)} bytes"):
        decode_image(data, max_bytes=len(data) - 1)
    with pytest.raises(UnsupportedImageType):
        decode_image("not bytes")  # type: ignore[arg-type]


def test_encoder_pixels_are_the_reference_servers():
    """Squashed to 448 x 448 (no crop) by torch's uint8 antialiased bicubic, then [-1, 1]."""
    import torch

    rgb = np.random.default_rng(0).integers(0, 256, (200, 320, 3), dtype=np.uint8)
    pixels = encoder_pixels(rgb, 448)
    assert pixels.shape == (1, 3, 448, 448) and pixels.dtype == torch.float32
    uint8 = torch.nn.functional.interpolate(
        torch.from_numpy(rgb).permute(2, 0, 1)[None], size=(448, 448), mode="bicubic", antialias=True
    )
    torch.testing.assert_close(pixels, uint8.float() / 127.5 - 1.0, rtol=0, atol=1e-6)
    # a float resize rounds differently: the uint8 path is the one that matches the reference
    floats = torch.nn.functional.interpolate(
        torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), size=(448, 448), mode="bicubic", antialias=True
    )
    assert (floats.clamp(0, 255).round() != uint8.float()).any()
    flat = encoder_pixels(np.full((10, 10, 3), 255, np.uint8), 448)
    assert float(flat.min()) == 1.0


def test_prepare_image_keeps_what_was_sent():
    image = prepare_image((DATA / "image_a.png").read_bytes(), 448)
    assert (image.width, image.height, image.format, image.mime_type) == (320, 200, "PNG", "image/png")


def test_a_model_without_vision_refuses_images_by_name():
    from assistant.backends.moshi import MoshiEngine

    eng = MoshiEngine.from_pretrained("tiny", batch_size=1, device="cpu", compile=False)
    eng.open(0)
    assert not eng.takes_images
    with pytest.raises(ImagesNotSupported, match="tiny.*does not take images"):
        eng.check_image((DATA / "image_a.png").read_bytes())
    with pytest.raises(ImagesNotSupported):
        eng.set_image(0, prepare_image((DATA / "image_a.png").read_bytes(), 448))
    eng.set_image(0, None)  # removing nothing is fine
    assert eng.image_status(0) == "none"
    eng.step(np.zeros((1, 1920), np.float32))  # the session goes on


def test_bad_input_leaves_a_vision_session_unharmed():
    """A refused image changes nothing: the slot's outputs equal those of a slot never sent one."""
    from assistant.backends.moshi import MoshiEngine

    def engine():
        eng = MoshiEngine.from_pretrained(
            str(DATA), batch_size=1, device="cpu", temperature=0.0, text_temperature=0.0, compile=False
        )
        eng.open(0)
        return eng

    hurt, clean = engine(), engine()
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((6, 1, 1920)).astype(np.float32) * 0.1
    for i, frame in enumerate(frames):
        if i == 2:
            for bad in (b"junk", png_claiming(40_000, 40_000), b"\x89PNG\r\n\x1a\n"):
                with pytest.raises(ImageError):
                    hurt.check_image(bad)
            assert hurt.image_status(0) == "none"
        a, b = hurt.step(frame), clean.step(frame)
        assert a.text == b.text
        np.testing.assert_array_equal(a.pcm_out, b.pcm_out)
    hurt.close(0)
    with pytest.raises(RuntimeError, match="not open"):
        hurt.set_image(0, None)
