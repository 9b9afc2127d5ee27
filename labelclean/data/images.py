"""Decode images once into a uint8 pixel cache.

Every image is opened with PIL, EXIF orientation applied, converted to RGB (whatever its mode:
L, P, RGBA, CMYK, 16-bit and so on; transparency is composited on white), its shorter side
resized to ``size`` and centre-cropped to ``size`` x ``size``. Training reads the cache, so later
epochs do no decoding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str, size: int) -> np.ndarray:
    """Return the image at ``path`` as a ``(size, size, 3)`` uint8 array.

    Raises ``OSError`` or ``ValueError`` (PIL's) for unreadable files.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when possible
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            img.load()
    w, h = img.size
    if w == 0 or h == 0:
        raise ValueError("image has zero size")
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new != (w, h):
        img = img.resize(new, Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, UnidentifiedImageError):
        return "not a readable image"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"cannot decode image: {text}"


def decode_images(
    paths: Sequence[str],
    size: int,
    advance: Callable[[int], None] | None = None,
    workers: int = 4,
) -> tuple[torch.Tensor, dict[int, str]]:
    """Decode ``paths`` into an ``(N, 3, size, size)`` uint8 tensor.

    Returns the tensor and ``{index: reason}`` for images that could not be read; their rows are
    zero. ``advance(n)`` is called as images finish (for progress bars).
    """
    pixels = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    failures: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            pixels[i] = load_image(paths[i], size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as exc:
            failures[i] = _describe(exc)

    chunk = 256
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), chunk):
            idx = range(start, min(start + chunk, len(paths)))
            list(pool.map(work, idx))
            if advance is not None:
                advance(len(idx))
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    return tensor, dict(sorted(failures.items()))
