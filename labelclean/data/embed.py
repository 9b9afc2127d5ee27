"""Embed images once with a pretrained encoder (``--finetune none``), with a reusable cache.

Images are read and preprocessed by the encoder's own transform in a ``DataLoader`` (worker
processes for large sets, pinned memory on CUDA), encoded in eval mode (mixed precision on
CUDA), and returned as ``(N, D)`` float32 in the samples' order. Unreadable images are
reported like the pixel path's (row -> reason).

The result is cached under ``$LABELCLEAN_CACHE`` (default ``~/.cache/labelclean``) in
``embeddings/<key>.npy``, keyed by the encoder's name, weights, preprocessing and every image's
path, size and modification time: a second audit of the same images with another method or
seed reuses it; a changed image or other weights make a new key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from labelclean.data.images import cache_root, files_digest
from labelclean.io import atomic_write, write_text
from labelclean.models.pretrained import Encoder

#: More images than this and decoding runs in worker processes.
WORKERS_FROM = 2_000


def cache_dir() -> Path:
    return cache_root() / "embeddings"


def cache_key(encoder: Encoder, paths: list[str]) -> str:
    return files_digest(paths, {"encoder": encoder.name, "weights": encoder.weights,
                                "preprocessing": encoder.preprocessing})


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], transform: Callable[[Any], torch.Tensor]) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            with Image.open(self.paths[i]) as img:
                return i, self.transform(img.convert("RGB")), ""
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return i, None, f"cannot read image ({type(exc).__name__}: {exc})"


def _collate(items: list[tuple[int, torch.Tensor | None, str]]) -> tuple[list[int], torch.Tensor | None, dict[int, str]]:
    good = [(i, x) for i, x, _ in items if x is not None]
    failed = {i: why for i, x, why in items if x is None}
    return [i for i, _ in good], torch.stack([x for _, x in good]) if good else None, failed


def embed_images(encoder: Encoder, paths: list[str], device: torch.device,
                 advance: Callable[[int], None] | None = None, batch_size: int = 64,
                 use_cache: bool = True) -> tuple[np.ndarray, dict[int, str], bool]:
    """``(N, D)`` embeddings, unreadable rows (row -> reason), and whether the cache was used."""
    key = cache_key(encoder, paths)
    npy, bad = cache_dir() / f"{key}.npy", cache_dir() / f"{key}.failures.json"
    if use_cache and npy.is_file() and bad.is_file():
        if advance:
            advance(len(paths))
        return np.load(npy), {int(k): v for k, v in json.loads(bad.read_text()).items()}, True
    workers = min(4, os.cpu_count() or 1) if len(paths) > WORKERS_FROM else 0
    loader = torch.utils.data.DataLoader(
        _Images(paths, encoder.transform), batch_size=batch_size, num_workers=workers,
        collate_fn=_collate, pin_memory=device.type == "cuda")
    out = np.zeros((len(paths), encoder.dim), dtype=np.float32)
    failures: dict[int, str] = {}
    model = encoder.model.to(device).eval()
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else _null()
    with torch.inference_mode(), autocast:
        for rows, x, failed in loader:
            failures.update(failed)
            if x is not None:
                out[rows] = model(x.to(device, non_blocking=True)).flatten(1).float().cpu().numpy()
            if advance:
                advance(len(rows) + len(failed))
    if use_cache:
        cache_dir().mkdir(parents=True, exist_ok=True)
        atomic_write(npy, lambda tmp: _save(tmp, out))
        write_text(bad, json.dumps({str(k): v for k, v in failures.items()}))
    return out, failures, False


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # np.save on a name would append ".npy"
        np.save(fh, array)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
