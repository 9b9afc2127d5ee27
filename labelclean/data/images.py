"""Decode images once into a uint8 pixel cache.

Every image is opened with PIL, EXIF orientation applied, converted to RGB (whatever its mode:
L, P, RGBA, CMYK, 16-bit, float and so on; transparency is composited on white), its shorter side
resized to ``size`` and centre-cropped to ``size`` x ``size``. Training reads the cache, so later
epochs do no decoding.

Pillow's decompression-bomb guard is replaced by our own limit (``max_pixels``, by default
Pillow's own error threshold): an image above it is skipped with a reason that names the option
to raise it, and large images below it decode without Pillow's raw warning (JPEGs at a reduced
scale through ``draft``); the caller says how many in one note.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from labelclean.errors import DataError
from labelclean.io import write_text

#: Pillow's warning threshold: images above it count as "large" (one note per run).
LARGE_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
#: Default limit: Pillow's own error threshold (twice its warning threshold).
DEFAULT_MAX_PIXELS = 2 * LARGE_PIXELS


class ImageTooLarge(ValueError):
    """An image above the pixel limit (a guard against decompression bombs)."""


def _value_range(arr: np.ndarray, mode: str) -> float:
    """Full scale of a one-channel image: 1 for floats in 0..1, 65535 for 16-bit, else 255."""
    top = float(np.nanmax(arr, initial=0))
    if mode == "F" and top <= 1.0:
        return 1.0
    return 65535.0 if top > 255 else 255.0


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        top = _value_range(arr, img.mode)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


_guard_lock = threading.Lock()
_guard_depth = 0
_guard_saved: int | None = None


@contextlib.contextmanager
def _own_pixel_guard() -> Iterator[None]:
    """Switch Pillow's process-wide guard off while our own limit applies (thread-safe: the
    first to enter saves Pillow's setting, the last to leave restores it)."""
    global _guard_depth, _guard_saved
    with _guard_lock:
        if _guard_depth == 0:
            _guard_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _guard_depth += 1
    try:
        yield
    finally:
        with _guard_lock:
            _guard_depth -= 1
            if _guard_depth == 0:
                Image.MAX_IMAGE_PIXELS = _guard_saved


def _open_checked(path: str, size: int, max_pixels: int | None) -> tuple[Image.Image, int]:
    """The opened image (JPEG in draft mode near ``size``) and its stored pixel count."""
    img = Image.open(path)
    w, h = img.size
    if max_pixels and w * h > max_pixels:
        img.close()
        raise ImageTooLarge(
            f"image has {w} x {h} = {w * h:,} pixels, above the limit of {max_pixels:,} (a guard "
            f"against decompression bombs); pass --max-image-pixels {w * h} (or 0: no limit) "
            "to read it")
    img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when possible
    return img, w * h


def load_image(path: str, size: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return the image at ``path`` as a ``(size, size, 3)`` uint8 array.

    Raises ``OSError`` or ``ValueError`` (PIL's; :class:`ImageTooLarge` above ``max_pixels``,
    ``None`` or 0: no limit) for unreadable files.
    """
    return _load(path, size, max_pixels)[0]


def _load(path: str, size: int, max_pixels: int | None) -> tuple[np.ndarray, int]:
    """The image as in :func:`load_image`, and its pixel count as stored."""
    with _own_pixel_guard():
        opened, stored = _open_checked(path, size, max_pixels)
        with opened:
            img = ImageOps.exif_transpose(opened)
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
    return np.asarray(img, dtype=np.uint8), stored


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, UnidentifiedImageError):
        return "not a readable image"
    if isinstance(exc, ImageTooLarge):
        return str(exc)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"cannot decode image: {text}"


class Decoded(NamedTuple):
    pixels: torch.Tensor  # (N, 3, size, size) uint8; rows of failed images are zero
    failures: dict[int, str]  # index -> reason
    large: int  # images above Pillow's warning threshold that were decoded


def decode_images(
    paths: Sequence[str],
    size: int,
    advance: Callable[[int], None] | None = None,
    workers: int = 4,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    out: np.ndarray | None = None,
) -> Decoded:
    """Decode ``paths`` into an ``(N, 3, size, size)`` uint8 tensor.

    Returns the tensor, ``{index: reason}`` for images that could not be read (their rows are
    zero) and the number of large images. ``advance(n)`` is called as images finish. ``out``
    (an ``(N, 3, size, size)`` uint8 array, such as a memory-mapped file) receives the pixels
    in place of a new array.
    """
    pixels = np.zeros((len(paths), 3, size, size), dtype=np.uint8) if out is None else out
    if pixels.shape != (len(paths), 3, size, size) or pixels.dtype != np.uint8:
        raise ValueError(f"decode_images: out has shape {pixels.shape} {pixels.dtype}, expected "
                         f"({len(paths)}, 3, {size}, {size}) uint8")
    failures: dict[int, str] = {}
    large: list[int] = []

    def work(i: int) -> None:
        try:
            image, stored = _load(paths[i], size, max_pixels)
            pixels[i] = image.transpose(2, 0, 1)
            if stored > LARGE_PIXELS:
                large.append(i)
        except (OSError, ValueError, SyntaxError) as exc:  # our own limit: ImageTooLarge
            pixels[i] = 0
            failures[i] = _describe(exc)

    chunk = 256
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), chunk):
            idx = range(start, min(start + chunk, len(paths)))
            list(pool.map(work, idx))
            if advance is not None:
                advance(len(idx))
    return Decoded(torch.from_numpy(pixels), dict(sorted(failures.items())), len(large))


#: Version of the pixel cache's layout and decoding; a change makes new cache keys.
PIXEL_CACHE_VERSION = 1


def cache_root() -> Path:
    """``$LABELCLEAN_CACHE``, by default ``~/.cache/labelclean`` (pixels and embeddings)."""
    return Path(os.environ.get("LABELCLEAN_CACHE", "~/.cache/labelclean")).expanduser()


def files_digest(paths: Sequence[str], head: dict[str, object]) -> str:
    """A key for a list of files as they are now: ``head``, then each path, size and mtime."""
    digest = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode())
    for p in paths:
        try:
            st = os.stat(p)
            digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            digest.update(f"{p}\0missing\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:24]


def decode_cached(
    paths: Sequence[str],
    size: int,
    advance: Callable[[int], None] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    use_cache: bool = True,
) -> tuple[Decoded, bool]:
    """:func:`decode_images` into a memory-mapped file under ``cache_root()/pixels``, reused
    while the images, the size and the pixel limit are unchanged; and whether it was reused.

    The pixels live in the page cache, not in the process's own memory: a million 32x32
    images are a 3 GB file that the OS keeps in memory as far as it can, and a second audit
    (another method, seed or a ``--resume``) decodes nothing. The file is written under a
    temporary name and renamed when complete, so an interrupted decode leaves no half cache;
    it is opened copy-on-write, so nothing the audit does can change it. Where the cache
    folder cannot be written the pixels are decoded into memory instead.
    """
    if use_cache:
        key = files_digest(paths, {"size": size, "max_pixels": max_pixels,
                                   "version": PIXEL_CACHE_VERSION})
        folder = cache_root() / "pixels"
        npy, meta = folder / f"{key}.npy", folder / f"{key}.json"
        if npy.is_file() and meta.is_file():
            info = json.loads(meta.read_text())
            pixels = np.load(npy, mmap_mode="c")
            if advance is not None:
                advance(len(paths))
            failures = {int(k): v for k, v in info["failures"].items()}
            return Decoded(torch.from_numpy(pixels), failures, int(info["large"])), True
        try:
            folder.mkdir(parents=True, exist_ok=True)
            check_cache_disk(len(paths), size, folder)
            tmp = folder / f".{key}.{os.getpid()}.npy"
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                            shape=(len(paths), 3, size, size))
        except OSError:
            out = None
        if out is not None:
            try:
                decoded = decode_images(paths, size, advance, max_pixels=max_pixels, out=out)
                out.flush()
                del out
                os.replace(tmp, npy)
            finally:
                tmp.unlink(missing_ok=True)
            write_text(meta, json.dumps({"failures": {str(k): v for k, v in decoded.failures.items()},
                                         "large": decoded.large}))
            return decoded._replace(pixels=torch.from_numpy(np.load(npy, mmap_mode="c"))), False
    check_cache_memory(len(paths), size)
    return decode_images(paths, size, advance, max_pixels=max_pixels), False


#: The pixel cache may take at most this share of the memory available when the run starts.
CACHE_MEMORY_SHARE = 0.7


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or ``None``."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_cache_disk(n: int, size: int, folder: Path) -> None:
    """Refuse, before decoding, a pixel cache file that would not fit on its disk."""
    need = n * 3 * size * size
    free = shutil.disk_usage(folder).free
    if need > free:
        raise DataError(
            f"--image-size {size}: {n:,} images need {need / 2**30:.1f} GiB of pixel cache in "
            f"{folder}, where {free / 2**30:.1f} GiB are free; set LABELCLEAN_CACHE to a folder "
            "with room, or choose a smaller --image-size")


def check_cache_memory(n: int, size: int) -> None:
    """Refuse, before decoding, a pixel cache that would not fit in memory."""
    need = n * 3 * size * size
    have = available_memory()
    if have is not None and need > CACHE_MEMORY_SHARE * have:
        raise DataError(
            f"--image-size {size}: {n:,} images need {need / 2**30:.1f} GiB of pixel cache, more "
            f"than {CACHE_MEMORY_SHARE:.0%} of the {have / 2**30:.1f} GiB available; choose a "
            "smaller --image-size")
