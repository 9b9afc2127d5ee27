"""Batch augmentation on cached uint8 pixels.

``crop-flip`` is torchvision's standard CIFAR recipe (``transforms.v2.RandomCrop(size,
padding=size // 8)`` then ``RandomHorizontalFlip()``) applied per sample, but vectorised over
the batch with one gather so that augmentation costs little next to the training step on CPU.
``crop`` drops the flip (for digits and text, where a mirror changes the class).
"""

from __future__ import annotations

import torch


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator, padding: int, flip: bool
) -> torch.Tensor:
    """Per-sample random crop (zero padding) and optional horizontal flip of ``(B, C, H, W)``."""
    b, c, h, w = x.shape
    if padding > 0:
        xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        rows = (torch.arange(h)[None, :] + dy[:, None])[:, None, :, None]
        cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, None, :]
        x = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "none":
        return x
    return random_crop_flip(x, generator, padding=max(1, x.shape[-1] // 8), flip=kind == "crop-flip")
