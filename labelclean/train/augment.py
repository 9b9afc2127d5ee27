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


#: Test-time views of the final model, as ``(dy, dx)`` multiples of the shift: the two
#: opposite diagonal shifts, next to the un-augmented image. Four diagonal shifts ranked no better
#: on CIFAR-10 (docs/benchmarks.md, ``levers_tta``); a mirror ranked worse.
SHIFTED_VIEWS = ((-1, 1), (1, -1))


def view_shifts(size: int) -> tuple[tuple[int, int], ...]:
    """:data:`SHIFTED_VIEWS` in pixels for ``size``-pixel images: half the crop padding of
    :func:`augment` (2 pixels at 32)."""
    step = max(1, size // 16)
    return tuple((dy * step, dx * step) for dy, dx in SHIFTED_VIEWS)


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``(B, C, H, W)`` moved by ``dy`` rows and ``dx`` columns with zero fill: the frame a training
    crop of :func:`random_crop_flip` gives with that offset."""
    p = max(abs(dy), abs(dx))
    if p == 0:
        return x
    h, w = x.shape[-2:]
    xp = torch.nn.functional.pad(x, (p, p, p, p))
    return xp[..., p + dy : p + dy + h, p + dx : p + dx + w]
