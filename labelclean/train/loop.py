"""The training loop shared by every method.

SGD with momentum, a linear warm-up over the first epoch and cosine decay to zero, computed
from the step count (so a resumed run continues on the same schedule). Images come from the
uint8 pixel cache, are augmented per batch (:mod:`labelclean.train.augment`) and normalised.
A checkpoint (model, optimizer, method state, RNG) is written atomically after every epoch;
``resume`` continues from it. All randomness after model initialisation comes from one
``torch.Generator`` seeded from ``config.seed`` and saved in the checkpoint, so a run is
deterministic given the seed, and a resumed run matches an uninterrupted one.

Where each method hook fires is documented in :mod:`labelclean.methods.base`.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from labelclean.config import RunConfig
from labelclean.errors import ConfigError, LabelcleanError
from labelclean.io import atomic_write
from labelclean.methods.base import Batch, Evidence, Method, TrainContext
from labelclean.models import Backbone, build_backbone, linear_probe
from labelclean.progress import Reporter
from labelclean.train.augment import augment, shifted, view_shifts

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainResult:
    model: Backbone
    evidence: Evidence
    epochs: int
    steps: int
    seconds: float
    images_seen: int
    resumed_from_epoch: int
    #: The final model's class probabilities on un-augmented images, ``(N, C)``.
    final_probs: np.ndarray | None = None
    #: Where it ran and the autocast dtype: "cpu"/"cuda", "fp32"/"bf16".
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def images_per_second(self) -> float:
        return self.images_seen / max(self.seconds, 1e-9)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available on this machine")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--precision`` on ``device``; ``None``: float32 throughout.

    ``auto`` is bfloat16 on a CUDA device that supports it (Ampere and later) and float32
    elsewhere. bfloat16 keeps float32's exponent range, so no loss scaling is needed, which
    matters here: the meta methods take gradients of gradients inside ``training_step``, out
    of reach of a ``GradScaler``. float16 is not offered for that reason.
    """
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


@contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """On CUDA, kernels that repeat given the seed: cuDNN's deterministic algorithms without
    autotuning, deterministic PyTorch ops (a warning, not an error, where one has none) and
    cuBLAS's fixed workspace. The previous settings come back afterwards. A no-op on a CPU,
    where the ops used here already repeat."""
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cudnn = torch.backends.cudnn
    before = (cudnn.deterministic, cudnn.benchmark, torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn.deterministic, cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = before[0], before[1]
        torch.use_deterministic_algorithms(before[2], warn_only=before[3])


def epoch_order(n: int, pool: torch.Tensor | None, generator: torch.Generator,
                rank: int = 0, world: int = 1) -> torch.Tensor:
    """The dataset rows one process trains on this epoch, in order: a permutation of ``pool``
    (all ``n`` rows when ``None``) drawn from the shared ``generator``, then every ``world``-th
    row from ``rank``.

    This is the sampler. Every process of a multi-GPU run draws the same permutation (same
    seed, same generator state) and keeps a disjoint shard of it, so the shards cover the epoch
    once; methods only see dataset rows (``Batch.index``) and keep per-row state, which a
    multi-process loop would merge at the end (:meth:`labelclean.methods.state.RowMeans.merge`).
    """
    order = torch.randperm(n, generator=generator) if pool is None else pool[
        torch.randperm(len(pool), generator=generator)]
    return order[rank::world]


def learning_rate(base: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay from ``base`` to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def is_vectors(inputs: torch.Tensor) -> bool:
    """``(N, D)`` float vectors (embeddings), as opposed to ``(N, 3, S, S)`` uint8 pixels."""
    return inputs.ndim == 2 and inputs.is_floating_point()


def _normalisation(model: Backbone, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (pixels) or per-dimension (vectors) mean and std, shaped to broadcast."""
    if is_vectors(inputs):
        chunk = inputs[:: max(1, len(inputs) // 100_000)].double()  # at most ~100k rows
        std = chunk.std(0) if len(chunk) > 1 else torch.ones(inputs.shape[1], dtype=torch.float64)
        std = torch.where(std > 0, std, torch.ones_like(std))  # constant dimensions stay as they are
        return chunk.mean(0).float().view(1, -1), std.float().view(1, -1)
    if model.mean is not None and model.std is not None:
        return torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1)
    x = inputs[:: max(1, len(inputs) // 20_000)].float() / 255.0  # at most ~20k images
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)


def train(
    config: RunConfig,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    verified: torch.Tensor,
    sample_ids: list[str],
    num_classes: int,
    method: Method,
    run_dir: Path,
    reporter: Reporter,
    exam_can_choose: bool = False,
    exam_light: bool = False,
) -> TrainResult:
    """Train ``method`` on ``inputs`` and return its evidence.

    ``exam_can_choose``: the audit has an exam that can choose the ranking afterwards
    (``TrainContext.exam_can_choose``); ``exam_light``: one that cannot, but says the noise is
    light (``TrainContext.exam_light``).

    ``inputs`` are ``(N, 3, S, S)`` uint8 pixels (the backbone ``config.backbone``, augmented
    per batch) or ``(N, D)`` float vectors (``--features``: a linear head on the standardised
    vectors, :func:`labelclean.models.linear_probe`, no augmentation).
    """
    assert config.epochs is not None and config.batch_size is not None
    device = resolve_device(config.device)
    n = len(labels)
    torch.manual_seed(config.seed)
    vectors = is_vectors(inputs)
    if vectors:
        model = linear_probe(inputs.shape[1], num_classes).to(device)
    else:
        model = build_backbone(config.backbone, num_classes, config.weights).to(device)
    if config.finetune == "head" and not vectors:  # the pretrained encoder stays as it is
        model.freeze_features()
    memory_format = torch.channels_last if model.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    mean, std = _normalisation(model, inputs)
    mean, std = mean.to(device), std.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    amp = resolve_precision(config.precision, device)

    pin = device.type == "cuda"  # page-locked host batches copy to the GPU asynchronously

    def prepare(x: torch.Tensor) -> torch.Tensor:
        if pin:
            x = x.pin_memory()
        if vectors:
            return x.to(device, non_blocking=True).float().sub_(mean).div_(std)
        x = x.to(device, non_blocking=True).float().div_(255.0).sub_(mean).div_(std)
        return x.contiguous(memory_format=memory_format)

    def load(rows: torch.Tensor, augmented: bool) -> torch.Tensor:
        x = inputs[rows.cpu()]
        if augmented and not vectors:
            x = augment(x, config.augment, generator)
        return prepare(x)

    def load_shifted(rows: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        return prepare(shifted(inputs[rows.cpu()], dy, dx))

    batch_size = min(config.batch_size, n)
    steps_per_epoch = max(1, n // batch_size)
    ctx = TrainContext(
        model=model, num_classes=num_classes, labels=labels.to(device),
        verified=verified.to(device), sample_ids=sample_ids, epochs=config.epochs,
        steps_per_epoch=steps_per_epoch, batch_size=batch_size, generator=generator,
        device=device, config=config, load=load, notice=reporter.notice, amp_dtype=amp,
        load_shifted=None if vectors or config.augment == "none" else load_shifted,
        exam_can_choose=exam_can_choose, exam_light=exam_light,
        features_fixed=vectors or config.finetune == "head",
    )
    method.setup(ctx)
    optimizer = torch.optim.SGD(
        method.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    ctx.optimizer = optimizer
    total = config.epochs * steps_per_epoch
    warmup = min(steps_per_epoch, total // 10)

    start_epoch = 0
    checkpoint = run_dir / CHECKPOINT
    if config.resume and checkpoint.is_file():
        start_epoch, ctx.step = _load_checkpoint(checkpoint, config, model, optimizer, method, generator,
                                                 data_fingerprint(sample_ids, labels, verified))
        reporter.notice(f"resuming from {checkpoint} after epoch {start_epoch}")
    elif config.resume:
        reporter.notice(f"--resume: no checkpoint in {run_dir}; starting from the beginning")

    started = time.perf_counter()
    seen = 0
    model.train()
    with reporter.task(f"training ({method.name})", total - ctx.step) as advance, deterministic(device):
        for epoch in range(start_epoch, config.epochs):
            ctx.epoch = epoch
            epoch_started, epoch_loss, epoch_steps, epoch_seen = time.perf_counter(), 0.0, 0, seen
            method.on_epoch_start(epoch)
            order = epoch_order(n, method.training_rows(), generator)
            for s in range(max(1, len(order) // batch_size)):
                rows = order[s * batch_size : (s + 1) * batch_size]
                batch = Batch(
                    index=rows, x=load(rows, True), y=ctx.labels[rows.to(device)],
                    verified=ctx.verified[rows.to(device)],
                    x2=load(rows, True) if method.wants_second_view() else None,
                )
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config.lr, min(ctx.step, total), total, warmup)
                with ctx.autocast():
                    loss = method.training_step(batch)
                if not torch.isfinite(loss):
                    raise LabelcleanError(
                        f"training diverged at epoch {epoch + 1}, step {s + 1} "
                        f"(loss {loss.item()}); try a lower --lr"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                method.after_step(batch)
                ctx.step += 1
                seen += len(rows)
                epoch_loss += float(loss.detach())
                epoch_steps += 1
                advance(1)
            method.on_epoch_end(epoch)
            took = time.perf_counter() - epoch_started
            reporter.epoch(epoch + 1, config.epochs, epoch_loss / max(1, epoch_steps),
                           (seen - epoch_seen) / max(took, 1e-9),
                           took * (config.epochs - epoch - 1))
            _save_checkpoint(checkpoint, config, model, optimizer, method, generator, epoch + 1,
                             ctx.step, data_fingerprint(sample_ids, labels, verified))
    seconds = time.perf_counter() - started
    model.eval()
    if method.wants_final_features() and not vectors:
        final_t, ctx.final_features = ctx.predict_with_features()
    else:
        final_t = ctx.predict()
        if method.wants_final_features():  # vectors are the head's features: no (N, d) copy
            ctx.final_features = inputs
    if method.wants_final_views() and ctx.load_shifted is not None:
        ctx.final_given = ctx.views_given(final_t, view_shifts(inputs.shape[-1]))
    evidence = method.evidence()
    final = final_t.numpy()
    return TrainResult(model, evidence, config.epochs, ctx.step, seconds, seen, start_epoch, final,
                       device=device.type, precision="bf16" if amp == torch.bfloat16 else "fp32")


def data_fingerprint(sample_ids: list[str], labels: torch.Tensor, verified: torch.Tensor) -> str:
    """A hash of what training sees of the data: ids, training labels and the verified mask.

    A resume after the labels or the trusted set changed would mix evidence from two versions
    of the data; the checkpoint stores this hash and a resume compares it.
    """
    digest = hashlib.sha256()
    digest.update("\0".join(sample_ids).encode("utf-8", "surrogateescape"))
    digest.update(labels.cpu().numpy().astype("int64").tobytes())
    digest.update(verified.cpu().numpy().astype("bool").tobytes())
    return digest.hexdigest()[:16]


def _save_checkpoint(
    path: Path,
    config: RunConfig,
    model: Backbone,
    optimizer: torch.optim.Optimizer,
    method: Method,
    generator: torch.Generator,
    epoch: int,
    step: int,
    data: str,
) -> None:
    state = {
        "fingerprint": config.fingerprint(),
        "data_fingerprint": data,
        "epoch": epoch,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "method": method.state_dict(),
        "generator": generator.get_state(),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(
    path: Path,
    config: RunConfig,
    model: Backbone,
    optimizer: torch.optim.Optimizer,
    method: Method,
    generator: torch.Generator,
    data: str,
) -> tuple[int, int]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LabelcleanError(f"{path}: cannot read checkpoint ({exc}); start a new run") from None
    if state.get("fingerprint") != config.fingerprint():
        raise ConfigError(
            f"{path}: checkpoint was made with different settings; resume with the same "
            "dataset and options, or choose a new --out"
        )
    if state.get("data_fingerprint") != data:
        raise ConfigError(
            f"{path}: the labels, the trusted set or the samples changed since this checkpoint; "
            "resuming would mix evidence from both versions: start a new run (--overwrite)"
        )
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
    except (KeyError, RuntimeError, ValueError) as exc:  # state of another labelclean version
        raise ConfigError(f"{path}: the checkpoint's state does not fit this version of labelclean "
                          f"({type(exc).__name__}); start a new run (--overwrite)") from None
    generator.set_state(state["generator"])
    return int(state["epoch"]), int(state["step"])
