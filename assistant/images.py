"""Images a user shows the assistant: decode and validate the bytes, then prepare the encoder's pixels.

Validation runs on the caller's thread (a connection's, never the frame loop's) and raises an
`ImageError` subclass whose `code` a protocol can send back as it is; nothing is decoded past the
header before the size checks pass, so a decompression bomb costs nothing. Preparation follows
Kyutai's MoshiVis server exactly: RGB uint8 -> resize to size x size (bicubic, antialiased, aspect
ratio squashed, no crop) on the uint8 pixels on the CPU -> /255 -> (x - 0.5) / 0.5, in float32.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")  # what Pillow calls the accepted types
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
MAX_IMAGE_BYTES = 10 * 2**20  # encoded size; every view of the model is resized to 448 px anyway
MAX_IMAGE_PIXELS = 40_000_000  # width x height before decoding (a 16:9 photo of 8400 x 4700)
MAX_IMAGE_SIDE = 16_384


class ImageError(ValueError):
    """An image that cannot be shown to the model; `code` names the reason for a wire protocol."""

    code = "invalid_image"


class ImageTooLarge(ImageError):
    code = "image_too_large"


class ImageDimensionsTooLarge(ImageError):
    code = "image_dimensions_too_large"


class UnsupportedImageType(ImageError):
    code = "unsupported_image_type"


class CorruptImage(ImageError):
    code = "corrupt_image"


class ImagesNotSupported(ImageError):
    code = "images_not_supported"


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for the encoder. pixels: float32 (1, 3, size, size) in [-1, 1] on the CPU."""

    pixels: object  # torch.Tensor; typed loosely so importing this module does not import torch
    width: int  # of the image as sent
    height: int
    format: str  # one of IMAGE_FORMATS

    @property
    def mime_type(self) -> str:
        return MIME_TYPES[self.format]


def decode_image(
    data: bytes,
    *,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_side: int = MAX_IMAGE_SIDE,
) -> tuple[np.ndarray, str]:
    """JPEG, PNG or WebP bytes -> (RGB uint8 (H, W, 3), format). Raises an ImageError subclass.

    An alpha channel is dropped (not composited), a palette or grey image expanded to RGB, EXIF
    orientation ignored, and an animated image gives its first frame: as the reference server does.
    """
    from PIL import Image

    if not isinstance(data, bytes | bytearray | memoryview):
        raise UnsupportedImageType(f"an image must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise CorruptImage("the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the image is {len(data)} bytes; at most {max_bytes} are accepted")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(bytes(data)), formats=IMAGE_FORMATS)
    except Image.UnidentifiedImageError:
        raise UnsupportedImageType(
            f"not a {', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]} image "
            f"(it starts with {bytes(data[:8])!r})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDimensionsTooLarge(f"the image's dimensions are too large: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise CorruptImage(f"the image cannot be read: {exc}") from None
    with picture:
        width, height = picture.size
        if width < 1 or height < 1:
            raise CorruptImage(f"the image has no pixels ({width} x {height})")
        if width > max_side or height > max_side or width * height > max_pixels:
            raise ImageDimensionsTooLarge(
                f"the image is {width} x {height} pixels; at most {max_side} per side and "
                f"{max_pixels} in all are accepted"
            )
        try:
            rgb = np.array(picture.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or damaged data
            raise CorruptImage(f"the image cannot be decoded: {exc}") from None
        return rgb, str(picture.format)


def encoder_pixels(rgb: np.ndarray, size: int):
    """RGB uint8 (H, W, 3) -> float32 (1, 3, size, size) in [-1, 1], as the reference server prepares it.

    The resize runs on uint8 on the CPU (torch's own antialiased bicubic for uint8, which is what
    torchvision uses there): a float resize rounds differently, by up to tens of levels.
    """
    import torch

    pixels = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True)
    return (resized.float() / 255.0 - 0.5) / 0.5


def prepare_image(data: bytes, size: int, **limits) -> PreparedImage:
    """Validate `data` and prepare the encoder's pixels (`limits`: those of `decode_image`)."""
    rgb, kind = decode_image(data, **limits)
    height, width = rgb.shape[:2]
    return PreparedImage(pixels=encoder_pixels(rgb, size), width=width, height=height, format=kind)
