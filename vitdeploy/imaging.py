"""Reading one image without trusting it: numpy and pillow only (no torch).

Used for datasets (`vitdeploy data get`) and on devices (`vitdeploy predict`), so a model
sees the same pixels in both places. Refused, with an `ImageError` that says why: files
that are not images, truncated files, decompression bombs (more than `MAX_PIXELS` pixels),
float-valued images. Every other mode becomes 8-bit RGB: grayscale and palette images are
expanded, CMYK is converted, 16-bit values are scaled to 8 bits, alpha is dropped.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_PIXELS = 50_000_000  # 50 megapixels: far above any ViT input, far below a bomb
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


class ImageError(ValueError):
    """An image that cannot or must not be decoded; the message says which and why."""


def to_rgb(im: Image.Image) -> Image.Image:
    """Any 8- or 16-bit integer mode as 8-bit RGB."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)).convert("RGB")
    if im.mode == "F":
        raise ImageError("floating-point pixels (mode F) have no defined 8-bit scale")
    if im.mode in ("P", "PA") and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def resize_center_crop(im: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Shorter side to `size`, then the central size x size square."""
    scale = size / min(im.size)
    w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
    im = im.resize((w, h), RESAMPLE[interpolation])
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def decode(data: bytes | Path, size: int | None = None, interpolation: str = "bicubic") -> np.ndarray:
    """uint8 RGB array (H, W, 3); resized and center-cropped to `size` when it is not already."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                if im.width * im.height > MAX_PIXELS:
                    pixels = f"{im.width}x{im.height}"
                    raise ImageError(f"{pixels} pixels is over the {MAX_PIXELS:,}-pixel limit (decompression bomb?)")
                if im.width == 0 or im.height == 0:
                    raise ImageError("the image is empty")
                im.load()  # decode now: a truncated file fails here, not later
                rgb = to_rgb(im)
                if size is not None and rgb.size != (size, size):
                    rgb = resize_center_crop(rgb, size, interpolation)
                return np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"over the {MAX_PIXELS:,}-pixel limit (decompression bomb?)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageError(f"truncated or corrupt image ({err})") from None
