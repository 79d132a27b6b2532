"""Reading one image without trusting it: numpy and pillow only (no torch).

Used for datasets (`vitdeploy data get`) and on devices (`vitdeploy predict`), so a model
sees the same pixels in both places. Refused, with an `ImageError` that says why: files
that are not images, truncated files, decompression bombs (more than `MAX_PIXELS` pixels),
float-valued images. Every other mode becomes 8-bit RGB: grayscale and palette images are
expanded, CMYK is converted, 16-bit values are scaled to 8 bits, alpha is dropped.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

try:  # libjpeg-turbo straight into numpy: a third of pillow's cost on a small JPEG, same pixels
    import simplejpeg
except ImportError:  # platforms without its wheel decode through pillow
    simplejpeg = None

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_PIXELS = 50_000_000  # 50 megapixels: far above any ViT input, far below a bomb
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


class ImageError(ValueError):
    """An image that cannot or must not be decoded; the message says which and why."""


def normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW: / 255, minus the per-channel mean, over the per-channel std.

    The one arithmetic of the build's evaluation and of the predictor, so both feed the model
    the same floats. In place on a single NCHW copy: on a device it runs beside inference.
    """
    x = images.transpose(0, 3, 1, 2).astype(np.float32, order="C")
    x /= np.float32(255.0)
    x -= np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    x /= np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return x


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


def scale_size(size: int, crop_pct: float = 1.0) -> int:
    """The side the shorter side is resized to before the central size x size crop (timm's
    evaluation transform: 248 for 224 at crop_pct 0.9)."""
    return size if crop_pct >= 1 else math.floor(size / crop_pct)


def resize_center_crop(im: Image.Image, size: int, interpolation: str = "bicubic", crop_pct: float = 1.0) -> Image.Image:
    """Shorter side to `scale_size(size, crop_pct)`, then the central size x size square."""
    side = scale_size(size, crop_pct)
    scale = side / min(im.size)
    w, h = max(side, round(im.width * scale)), max(side, round(im.height * scale))
    if (w, h) != im.size:
        im = im.resize((w, h), RESAMPLE[interpolation])
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a 3-component baseline or progressive JPEG without an Adobe marker.

    Such files decode straight into RGB with libjpeg-turbo's default (accurate) IDCT and
    upsampling, the settings pillow uses, without `Image.open`'s Python header parsing.
    Anything else: None.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    i, end = 2, len(data)
    while i + 4 <= end and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xEE:  # Adobe APP14: colour transforms are pillow's business
            return None
        if marker in (0xC0, 0xC1, 0xC2):
            if i + 10 > end or data[i + 9] != 3:
                return None
            height, width = int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
            return (width, height) if width and height else None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def decode_jpeg(data: bytes) -> np.ndarray | None:
    """The fast path of `decode` for plain colour JPEGs; None where it does not apply or fails."""
    size = jpeg_size(data)
    if size is None or size[0] * size[1] > MAX_PIXELS:
        return None
    try:
        if simplejpeg is not None:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        return np.asarray(Image.frombytes("RGB", size, data, "jpeg", "RGB", ""), dtype=np.uint8)
    except (ValueError, OSError, RuntimeError):  # truncated or unusual: the general path says what is wrong
        return None


def read_file(path: Path) -> bytes:
    """The whole file, in as few system calls as its size allows (a small image: one read).

    An unreadable file raises OSError: not an image problem.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size + 1)
        if len(data) == size:
            return data
        chunks = [data]  # a short read, or a file that grew: read on to the end
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def decode(data: bytes | Path, size: int | None = None, interpolation: str = "bicubic", crop_pct: float = 1.0) -> np.ndarray:
    """uint8 RGB array (H, W, 3); resized and center-cropped to `size` (see `resize_center_crop`)
    unless it is size x size already and the whole image is kept (crop_pct 1)."""
    if isinstance(data, Path):
        data = read_file(data)
    fast = decode_jpeg(data)
    if fast is not None:
        if size is not None and (fast.shape[:2] != (size, size) or crop_pct < 1):
            return np.asarray(resize_center_crop(Image.fromarray(fast), size, interpolation, crop_pct), dtype=np.uint8)
        return fast
    source = io.BytesIO(data)
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
                if size is not None and (rgb.size != (size, size) or crop_pct < 1):
                    rgb = resize_center_crop(rgb, size, interpolation, crop_pct)
                return np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"over the {MAX_PIXELS:,}-pixel limit (decompression bomb?)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageError(f"truncated or corrupt image ({err})") from None
