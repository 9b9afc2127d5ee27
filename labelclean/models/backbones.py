"""Backbones split into ``features`` (image -> vector) and a linear ``head`` (vector -> logits).

Registered names (``labelclean.models.BACKBONES``):

* ``small_cnn`` (default): four conv-BN-ReLU stages (32-64-128-256 channels), global average
  pooling; about 0.4M parameters, trained from scratch, ~900 images/s training on 2 CPU cores
  at 32x32 in channels-last layout.
* ``resnet18`` / ``resnet50``: torchvision ResNets. ``weights`` takes ``"imagenet"`` (torchvision's
  ``DEFAULT`` weights, downloaded by torchvision on a connected machine) or a path to a local
  checkpoint, loaded with ``torch.load(weights_only=True)``.
* ``test_tiny``: one conv-BN-ReLU layer, for fast tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from labelclean.errors import ConfigError, DataError
from labelclean.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """``features`` maps images to ``(B, feature_dim)``; ``head`` is ``nn.Linear``.

    ``mean``/``std`` are the input normalisation the weights expect, or ``None`` to use the
    dataset's own per-channel statistics (for models trained from scratch).
    """

    def __init__(
        self,
        features: nn.Module,
        feature_dim: int,
        num_classes: int,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.features = features
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)
        self.mean = mean
        self.std = std
        self.channels_last = channels_last
        self.features_frozen = False

    def freeze_features(self) -> None:
        """``--finetune head``: the encoder neither learns nor adapts. Its parameters take no
        gradient and it stays in eval mode whatever ``train()`` is called with, so batch-norm
        running statistics are not re-estimated on the audited images and dropout inside the
        encoder stays off."""
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.features_frozen = True
        self.features.eval()

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.features_frozen:
            self.features.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


BackboneFactory = Callable[[int, str | None], Backbone]
BACKBONES: Registry[BackboneFactory] = Registry("backbone")


def _cbr(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _no_weights(name: str, weights: str | None) -> None:
    if weights is not None:
        raise ConfigError(f"--weights: backbone {name!r} is trained from scratch and takes no weights")


@BACKBONES.register("small_cnn")
def small_cnn(num_classes: int, weights: str | None = None) -> Backbone:
    model = Backbone(_small_cnn_features(), 256, num_classes, channels_last=True)
    if weights is not None:
        _load_checkpoint(model, Path(weights), "small_cnn")
    return model


def _small_cnn_features() -> nn.Module:
    return nn.Sequential(
        *_cbr(3, 32), nn.MaxPool2d(2),
        *_cbr(32, 64), nn.MaxPool2d(2),
        *_cbr(64, 128), nn.MaxPool2d(2),
        *_cbr(128, 256),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


@BACKBONES.register("test_tiny")
def test_tiny(num_classes: int, weights: str | None = None) -> Backbone:
    _no_weights("test_tiny", weights)
    features = nn.Sequential(*_cbr(3, 8), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    return Backbone(features, 32, num_classes)


def _resnet(arch: str, num_classes: int, weights: str | None) -> Backbone:
    import torchvision

    builder = getattr(torchvision.models, arch)
    if weights is None:
        net = builder(weights=None)
        mean = std = None
    elif weights.lower() in ("imagenet", "default"):
        enum = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            net = builder(weights=enum)
        except Exception as exc:  # network or cache errors from torch.hub
            raise ConfigError(
                f"--weights imagenet: could not load torchvision's {arch} weights "
                f"({type(exc).__name__}); on an offline machine pass a local checkpoint path"
            ) from None
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        net = builder(weights=None)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    model = Backbone(net, feature_dim, num_classes, mean, std)
    if weights is not None and weights.lower() not in ("imagenet", "default"):
        _load_checkpoint(model, Path(weights), arch)
    return model


def _load_checkpoint(model: Backbone, path: Path, arch: str) -> None:
    """Load a local checkpoint: a labelclean backbone state dict, or a torchvision one.

    A torchvision-style dict (``conv1.weight`` ... ``fc.weight``) loads into ``features``; its
    ``fc`` is dropped because the head is sized for this dataset's classes. A labelclean dict
    (``features.*``, ``head.*``) loads whole when the class count matches, else features only.
    """
    if not path.is_file():
        raise DataError(f"--weights {path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"--weights {path}: cannot read as a PyTorch checkpoint: {exc}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"--weights {path}: expected a state dict of tensors")
    if any(k.startswith("features.") for k in state):
        head = {k: v for k, v in state.items() if k.startswith("head.")}
        if head and head["head.weight"].shape != model.head.weight.shape:
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
    else:
        state = {f"features.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("head.")]
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[:3]
        raise DataError(
            f"--weights {path}: checkpoint does not fit backbone {arch!r}: "
            f"{len(missing)} missing and {len(result.unexpected_keys)} unexpected keys "
            f"(e.g. {', '.join(bad)})"
        )


@BACKBONES.register("resnet18")
def resnet18(num_classes: int, weights: str | None = None) -> Backbone:
    return _resnet("resnet18", num_classes, weights)


@BACKBONES.register("resnet50")
def resnet50(num_classes: int, weights: str | None = None) -> Backbone:
    return _resnet("resnet50", num_classes, weights)


def linear_probe(dim: int, num_classes: int) -> Backbone:
    """A linear head on ``(B, dim)`` vectors (``--features``): ``features`` is the identity, so
    head-scope meta steps and MLNT's neighbours work on the vectors themselves."""
    return Backbone(nn.Identity(), dim, num_classes)


def build_backbone(name: str, num_classes: int, weights: str | None = None) -> Backbone:
    """A registered backbone, or a pretrained ``FAMILY:NAME`` encoder with a new linear head
    (``--finetune head|full``), normalised with the encoder's own mean and std."""
    from labelclean.models.pretrained import is_pretrained_name, load_encoder

    if is_pretrained_name(name):
        enc = load_encoder(name, weights)
        mean, std = enc.preprocessing.get("mean"), enc.preprocessing.get("std")
        return Backbone(enc.model, enc.dim, num_classes, tuple(mean) if mean else IMAGENET_MEAN,
                        tuple(std) if std else IMAGENET_STD)
    return BACKBONES.get(name)(num_classes, weights)
