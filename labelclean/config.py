"""The one typed config object of an audit run, saved as ``config.json`` beside its outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelclean.errors import ConfigError

CONFIG_VERSION = 1

#: Settings that do not change what a run computes; they are left out of the resume check.
NON_SEMANTIC_FIELDS = ("out", "resume", "overwrite", "device", "num_threads", "report",
                       "fail_if_noise_above", "fail_if_flagged_above")


@dataclass(frozen=True)
class RunConfig:
    """Everything an audit needs. ``None`` for ``epochs`` and ``batch_size`` means "fit to data".

    Build it with keyword arguments, then call :meth:`validate` (``audit`` does it for you).
    """

    dataset: str
    trusted: str | None = None
    out: str | None = None
    path_column: str = "path"
    label_column: str = "label"
    id_column: str | None = None
    method: str = "auto"
    backbone: str = "small_cnn"
    weights: str | None = None
    image_size: int | None = None
    #: Skip images with more pixels (a decompression-bomb guard); None: Pillow's limit, 0: none.
    max_image_pixels: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str = "crop-flip"
    seed: int = 0
    strict: bool = False
    threshold: float | None = None
    #: How many rows to flag: f1, the number with the highest expected F1; count, the expected
    #: number of wrong labels (labelclean.scoring.decide).
    flag_rule: str = "f1"
    #: Share of the verified dataset rows scored blind as the exam (labelclean.exam); 0: none.
    exam_share: float = 0.5
    #: Gates (exit 3 from the CLI): the noise rate's lower bound, or the flagged count, above.
    fail_if_noise_above: float | None = None
    fail_if_flagged_above: int | None = None
    meta_scope: str = "head"
    method_options: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    #: Autocast precision of training and scoring: auto (bfloat16 on a CUDA device that has it,
    #: float32 elsewhere), fp32, or bf16 (also on CPU).
    precision: str = "auto"
    num_threads: int | None = None
    #: A user's embeddings (Parquet/CSV with ids, or .npy in manifest order): train on them.
    features: str | None = None
    #: A user's out-of-sample predicted probabilities: score them, no training.
    pred_probs: str | None = None
    #: none: embed once with a pretrained FAMILY:NAME backbone and train on the vectors; head:
    #: train the head on augmented images, encoder frozen; full: train everything. None: none
    #: for FAMILY:NAME backbones, full for the others.
    finetune: str | None = None
    report: bool = True

    def validate(self) -> RunConfig:
        """Check ranges; raise :class:`ConfigError` with what was expected.

        Method and backbone names are checked where they are built (their registries).
        """
        checks = [
            (self.image_size is None or 8 <= self.image_size <= MAX_IMAGE_SIZE,
             f"--image-size: expected 8 to {MAX_IMAGE_SIZE}, found {self.image_size}"),
            (self.max_image_pixels is None or self.max_image_pixels >= 0,
             f"--max-image-pixels: expected >= 0 (0: no limit), found {self.max_image_pixels}"),
            (self.epochs is None or self.epochs >= 1, f"--epochs: expected >= 1, found {self.epochs}"),
            (self.batch_size is None or self.batch_size >= 2,
             f"--batch-size: expected >= 2, found {self.batch_size}"),
            (self.lr > 0, f"--lr: expected > 0, found {self.lr}"),
            (0 <= self.momentum < 1, f"momentum: expected in [0, 1), found {self.momentum}"),
            (self.weight_decay >= 0, f"weight decay: expected >= 0, found {self.weight_decay}"),
            (
                self.augment in AUGMENTATIONS,
                f"--augment: expected one of {', '.join(AUGMENTATIONS)}, found {self.augment!r}",
            ),
            (
                self.threshold is None or 0 < self.threshold < 1,
                f"--threshold: expected a value in (0, 1), found {self.threshold}",
            ),
            (0 <= self.exam_share < 1, f"--exam-share: expected a value in [0, 1), found {self.exam_share}"),
            (self.fail_if_noise_above is None or 0 <= self.fail_if_noise_above <= 1,
             f"--fail-if-noise-above: expected a rate in [0, 1], found {self.fail_if_noise_above}"),
            (self.fail_if_flagged_above is None or self.fail_if_flagged_above >= 0,
             f"--fail-if-flagged-above: expected >= 0, found {self.fail_if_flagged_above}"),
            (
                self.meta_scope in ("head", "full"),
                f"--meta-scope: expected head or full, found {self.meta_scope!r}",
            ),
            (self.finetune in (None, "none", "head", "full"),
             f"--finetune: expected none, head or full, found {self.finetune!r}"),
            (not (self.finetune in ("none", "head") and ":" not in self.backbone
                  and self.weights is None),
             f"--finetune {self.finetune}: needs pretrained weights (--backbone FAMILY:NAME or "
             "--weights); a network trained from scratch is trained in full"),
            (not (self.features and self.pred_probs),
             "--features and --pred-probs: expected one of them, found both"),
            (self.flag_rule in ("f1", "count"),
             f"--flag-rule: expected f1 or count, found {self.flag_rule!r}"),
            (self.precision in ("auto", "fp32", "bf16"),
             f"--precision: expected auto, fp32 or bf16, found {self.precision!r}"),
            (
                self.device in ("cpu", "cuda", "auto"),
                f"--device: expected cpu, cuda or auto, found {self.device!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"config_version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = dict(data)
        version = data.pop("config_version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"config version: expected {CONFIG_VERSION}, found {version}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"config: unknown settings {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: expected a labelclean config.json: {exc}") from None
        return cls.from_dict(data)

    def fingerprint(self) -> str:
        """A hash of the settings that change results (checked when resuming)."""
        data = {k: v for k, v in self.to_dict().items() if k not in NON_SEMANTIC_FIELDS}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


AUGMENTATIONS = ("crop-flip", "crop", "none")
#: Images are cached decoded as uint8 (3 x size x size bytes each); 1024 pixels a side is
#: already 3 MiB an image, far past what the backbones gain from.
MAX_IMAGE_SIZE = 1024
