"""Pretrained image encoders from the ecosystem, each with its own preprocessing.

``--backbone FAMILY:NAME`` with ``--weights``:

* ``tv:NAME``: a torchvision classification model through its weights API
  (``torchvision.models.get_model``); ``--weights imagenet`` takes the model's ``DEFAULT``
  weights (downloaded on a connected machine), a path loads a local state dict. Preprocessing
  is the weights' own preset (``get_model_weights(NAME).DEFAULT.transforms()``: resize, centre
  crop, mean and std), known without downloading anything.
* ``timm:NAME`` (``pip install labelclean[timm]``): ``timm.create_model(NAME, num_classes=0)``;
  ``--weights hub`` loads the hub weights, a path loads a local checkpoint through timm's own
  loader (``pretrained_cfg_overlay=dict(file=PATH)``). Preprocessing from
  ``timm.data.resolve_data_config`` and ``create_transform`` (the model's pretrained config).
* ``clip:NAME`` (``pip install labelclean[clip]``): ``open_clip.create_model_and_transforms``
  with ``pretrained=`` a tag (``--weights openai``) or a local file; the image tower's
  ``encode_image`` and open_clip's evaluation transform.

A wrong preprocessing silently ruins embeddings, so the transform always comes from the
library that defines the weights, never from labelclean, and is recorded in the summary.
Classifier heads are removed: the encoder returns the pooled features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labelclean.errors import ConfigError, DataError

FAMILIES = ("tv", "timm", "clip")
HUB_WEIGHTS = ("imagenet", "default", "hub")


@dataclass
class Encoder:
    """An image encoder: PIL image -> ``transform`` -> ``model`` -> ``(B, dim)`` features."""

    name: str
    model: nn.Module
    transform: Callable[[Any], torch.Tensor]
    dim: int
    preprocessing: dict[str, Any] = field(default_factory=dict)
    #: What the weights were (hub tag, or a file with its size and SHA-256 prefix).
    weights: str = "random"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def is_pretrained_name(name: str) -> bool:
    return ":" in name and name.split(":", 1)[0] in FAMILIES


def _weights_id(weights: str | None) -> str:
    if weights is None:
        return "random"
    path = Path(weights)
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return f"{path.name} ({path.stat().st_size} bytes, sha256 {digest.hexdigest()[:16]})"
    return weights


def _local(weights: str | None) -> Path | None:
    if weights is None or weights.lower() in HUB_WEIGHTS or weights in ("openai",):
        return None
    path = Path(weights)
    if not path.is_file():
        raise DataError(f"--weights {weights}: checkpoint file not found (or use a hub name)")
    return path


def _need(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--backbone {extra}:...: needs {module}; install it with "
                          f"pip install 'labelclean[{extra}]'") from None


def _output_dim(model: nn.Module, size: int) -> int:
    model.eval()
    with torch.no_grad():
        return int(model(torch.zeros(1, 3, size, size)).flatten(1).shape[1])


def _strip_classifier(net: nn.Module) -> nn.Module:
    """Replace a torchvision model's final classifier with the identity."""
    for attr in ("fc", "head", "heads"):
        if isinstance(getattr(net, attr, None), (nn.Linear, nn.Sequential)):
            setattr(net, attr, nn.Identity())
            return net
    classifier = getattr(net, "classifier", None)
    if isinstance(classifier, nn.Linear):
        net.classifier = nn.Identity()
    elif isinstance(classifier, nn.Sequential) and any(isinstance(m, nn.Linear) for m in classifier):
        last = max(i for i, m in enumerate(classifier) if isinstance(m, nn.Linear))
        classifier[last] = nn.Identity()
    else:
        raise ConfigError(f"--backbone tv:{type(net).__name__}: no classifier layer found to remove")
    return net


def _torchvision(name: str, weights: str | None) -> Encoder:
    import torchvision

    try:
        preset = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        known = ", ".join(torchvision.models.list_models(module=torchvision.models)[:8])
        raise ConfigError(f"--backbone tv:{name}: not a torchvision classification model "
                          f"(e.g. {known}, ...)") from None
    local = _local(weights)
    if weights is not None and local is None:
        try:
            net = torchvision.models.get_model(name, weights=preset)
        except Exception as exc:  # network or cache errors from torch.hub
            raise ConfigError(f"--weights {weights}: could not load torchvision's {name} weights "
                              f"({type(exc).__name__}); on an offline machine pass a local file") from None
    else:
        net = torchvision.models.get_model(name, weights=None)
        if local is not None:
            state = _read_state(local)
            missing, unexpected = net.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise DataError(f"--weights {local}: does not fit tv:{name} ({len(missing)} missing, "
                                f"{len(unexpected)} unexpected keys, e.g. "
                                f"{', '.join((missing or unexpected)[:2])})")
    transform = preset.transforms()
    net = _strip_classifier(net)
    crop = int(transform.crop_size[0])
    return Encoder(f"tv:{name}", net, transform, _output_dim(net, crop), {
        "resize": list(transform.resize_size), "crop": crop, "mean": list(transform.mean),
        "std": list(transform.std), "interpolation": str(transform.interpolation.value),
        "source": "torchvision weights preset"}, _weights_id(weights))


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"--weights {path}: cannot read as a checkpoint: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DataError(f"--weights {path}: expected a state dict of tensors")
    return state


def _timm(name: str, weights: str | None) -> Encoder:
    timm = _need("timm", "timm")
    if name not in timm.list_models():
        raise ConfigError(f"--backbone timm:{name}: timm has no model of that name")
    local = _local(weights)
    kwargs: dict[str, Any] = {"num_classes": 0}
    if local is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(local)})
    elif weights is not None:
        kwargs["pretrained"] = True
    try:
        net = timm.create_model(name, **kwargs)
    except (RuntimeError, KeyError) as exc:
        raise DataError(f"--weights {weights}: does not fit timm:{name} ({str(exc).splitlines()[0][:200]})") from None
    except OSError as exc:
        raise ConfigError(f"--weights {weights}: could not load timm:{name} weights "
                          f"({type(exc).__name__}); on an offline machine pass a local file") from None
    config = timm.data.resolve_data_config({}, model=net)
    transform = timm.data.create_transform(**config)
    return Encoder(f"timm:{name}", net, transform, int(net.num_features), {
        "input_size": list(config["input_size"]), "crop_pct": config.get("crop_pct"),
        "interpolation": config.get("interpolation"), "mean": list(config["mean"]),
        "std": list(config["std"]), "source": "timm.data.resolve_data_config"}, _weights_id(weights))


class _ClipImage(nn.Module):
    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(x)  # type: ignore[operator]


def _clip(name: str, weights: str | None) -> Encoder:
    open_clip = _need("open_clip", "clip")
    if name not in open_clip.list_models():
        raise ConfigError(f"--backbone clip:{name}: open_clip has no model of that name "
                          f"(e.g. {', '.join(open_clip.list_models()[:5])}, ...)")
    local = _local(weights)
    pretrained = str(local) if local is not None else weights
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
    except (RuntimeError, KeyError) as exc:
        raise DataError(f"--weights {weights}: does not fit clip:{name} ({str(exc).splitlines()[0][:200]})") from None
    except OSError as exc:
        raise ConfigError(f"--weights {weights}: could not load clip:{name} weights "
                          f"({type(exc).__name__}); on an offline machine pass a local file") from None
    net = _ClipImage(model)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    normalize = next((t for t in getattr(preprocess, "transforms", []) if hasattr(t, "mean")), None)
    return Encoder(f"clip:{name}", net, preprocess, _output_dim(net, size), {
        "image_size": size, "mean": list(getattr(normalize, "mean", [])),
        "std": list(getattr(normalize, "std", [])), "source": "open_clip evaluation transform"},
        _weights_id(weights))


def load_encoder(name: str, weights: str | None) -> Encoder:
    """The encoder ``FAMILY:NAME`` with ``weights`` (hub tag, local file, or None: random)."""
    family, _, model = name.partition(":")
    if family not in FAMILIES or not model:
        raise ConfigError(f"--backbone {name}: expected FAMILY:NAME with FAMILY one of "
                          f"{', '.join(FAMILIES)} (e.g. tv:resnet50, timm:vit_small_patch16_224, "
                          "clip:ViT-B-32)")
    torch.manual_seed(0)  # random weights (tests) are the same every time
    loader = {"tv": _torchvision, "timm": _timm, "clip": _clip}[family]
    encoder = loader(model, weights)
    encoder.model.eval()
    return encoder
