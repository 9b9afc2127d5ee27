"""The interface every noisy-label method implements.

A method is an object that owns its per-sample state and its extra networks. The shared loop in
:mod:`labelclean.train.loop` calls it like this::

    method.setup(ctx)                          # build tables, teachers, indexes
    for epoch in range(start_epoch, epochs):
        method.on_epoch_start(epoch)
        rows = method.training_rows()           # None: every row
        for batch in batches(rows):             # shuffled; batch.index are dataset rows
            loss = method.training_step(batch)  # may run virtual steps, meta steps
            loss.backward(); optimizer.step(); scheduler.step()
            method.after_step(batch)            # e.g. EMA teacher update
        method.on_epoch_end(epoch)
        save checkpoint (model, optimizer, method.state_dict(), RNG)
    evidence = method.evidence()                # per-sample suspicion and suggestion

Per-sample state lives in tensors indexed by dataset row ``i``; row ``i`` is sample
``ctx.sample_ids[i]`` for the whole run, and :meth:`state_dict` stores the ids so a resume
against different data is refused. Batch position is never used as identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from labelclean.errors import ConfigError
from labelclean.methods.options import MethodOptions
from labelclean.methods.state import RowMeans
from labelclean.models import Backbone
from labelclean.registry import Registry
from labelclean.scoring import Evidence

if TYPE_CHECKING:
    from labelclean.config import RunConfig


@dataclass
class Batch:
    """One training batch. ``index`` holds dataset rows (stable ids), never positions."""

    index: torch.Tensor  # (B,) int64 dataset rows
    x: torch.Tensor  # (B, 3, S, S) augmented, normalised view
    y: torch.Tensor  # (B,) int64 training labels: the trusted label where verified, else given
    verified: torch.Tensor  # (B,) bool
    x2: torch.Tensor | None = None  # second augmented view, for methods with ``num_views = 2``


@dataclass
class TrainContext:
    """What the loop hands a method in :meth:`Method.setup`."""

    model: Backbone
    num_classes: int
    labels: torch.Tensor  # (N,) training labels by dataset row
    verified: torch.Tensor  # (N,) bool by dataset row
    sample_ids: list[str]
    epochs: int
    steps_per_epoch: int
    batch_size: int
    generator: torch.Generator
    device: torch.device
    config: RunConfig
    load: Callable[[torch.Tensor, bool], torch.Tensor]  # (rows, augment) -> normalised images
    notice: Callable[[str], None]
    optimizer: torch.optim.Optimizer | None = None  # set by the loop after setup
    step: int = 0
    epoch: int = 0
    #: Autocast dtype of forward passes (``--precision``); ``None``: float32.
    amp_dtype: torch.dtype | None = None
    #: ``(rows, dy, dx) -> normalised images`` moved by ``(dy, dx)`` pixels
    #: (:func:`labelclean.train.augment.shifted`); ``None`` where no such view exists (vectors,
    #: ``--augment none``).
    load_shifted: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None
    #: ``(N,)`` the final model's probability of each row's label, averaged over the un-augmented
    #: image and the shifted views (:meth:`views_given`); set by the loop after training for a
    #: method whose :meth:`Method.wants_final_views` is true, where the views exist.
    final_given: torch.Tensor | None = None
    #: ``(N, feature_dim)`` the final model's features of the un-augmented images (float32, on
    #: the CPU; with ``--features``, the vectors as given); set by the loop after training for a
    #: method whose :meth:`Method.wants_final_features` is true.
    final_features: torch.Tensor | None = None
    #: The final features are not trained by this run (``--features`` vectors, or a frozen
    #: pretrained encoder with ``--finetune head``): the network is a linear head on them.
    features_fixed: bool = False
    #: The audit has an exam that can choose the ranking after training (at least
    #: :data:`labelclean.exam.MIN_FOR_SEPARATION` wrong and as many right labels among its
    #: rows, :func:`labelclean.exam.choose_ranking`). Only those counts are known here; the
    #: exam rows still train blind, on their given labels.
    exam_can_choose: bool = False
    #: The audit has an exam that cannot rank but says the noise is light
    #: (:func:`labelclean.exam.says_light`).
    exam_light: bool = False

    @property
    def num_samples(self) -> int:
        return len(self.sample_ids)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return self.step / max(1, self.total_steps)

    def autocast(self) -> torch.autocast:
        """Mixed precision for a forward pass (a no-op where ``amp_dtype`` is ``None``)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    @torch.no_grad()
    def predict(self, rows: torch.Tensor | None = None, batch_size: int = 512) -> torch.Tensor:
        """Softmax probabilities ``(len(rows), C)`` of the current model in eval mode."""
        return self.forward_all(lambda x, _: self.model(x).softmax(1), rows, batch_size)

    @torch.no_grad()
    def predict_with_features(self, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax probabilities ``(N, C)`` and features ``(N, feature_dim)`` of every row's
        un-augmented image in one pass of the current model (eval mode)."""
        model = self.model
        c = self.num_classes

        def both(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            h = model.features(x).flatten(1)
            return torch.cat([model.head(h).float().softmax(1), h.float()], dim=1)

        out = self.forward_all(both, batch_size=batch_size)
        return out[:, :c].contiguous(), out[:, c:]  # features: a view, not a second (N, d) copy

    @torch.no_grad()
    def views_given(self, final: torch.Tensor, shifts: tuple[tuple[int, int], ...],
                    batch_size: int = 512) -> torch.Tensor:
        """``(N,)`` the current model's probability of each row's label, averaged over the
        un-augmented image (``final``, its ``(N, C)`` probabilities) and one view per
        ``(dy, dx)`` in ``shifts`` (:attr:`load_shifted`), eval mode.

        A label the network memorised against its image holds on that exact image but is
        fragile when the image moves by a pixel or two; a label that fits the image is not.
        Only the label's probability is kept per view: ``(N,)``, not another ``(N, C)`` table.
        """
        shifted = self.load_shifted
        if shifted is None:
            raise RuntimeError("views_given: this run has no shifted views")
        total = final.gather(1, self.labels.cpu().view(-1, 1))[:, 0].double()

        def p_label(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return self.model(x).float().softmax(1).gather(1, self.labels[rows.to(x.device)].view(-1, 1))[:, 0]

        for dy, dx in shifts:
            view = self.forward_all(p_label, batch_size=batch_size,
                                    load=lambda rows: shifted(rows, dy, dx))  # noqa: B023 (used at once)
            total += view.double()
        return (total / (1 + len(shifts))).float()

    @torch.no_grad()
    def forward_all(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        rows: torch.Tensor | None = None,
        batch_size: int = 512,
        load: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Apply ``fn(images, rows)`` to the images of ``rows`` (all rows by default), a chunk at
        a time in eval mode; the images are un-augmented unless ``load`` (rows -> images) says
        otherwise.

        The output is allocated once and filled chunk by chunk (a list of chunks joined at the
        end would hold it twice: 4 GB at a million 512-d rows)."""
        rows = torch.arange(self.num_samples) if rows is None else rows
        load = (lambda r: self.load(r, False)) if load is None else load
        was_training = self.model.training
        self.model.eval()
        out = torch.empty(0)
        try:
            for i in range(0, len(rows), batch_size):
                part = rows[i : i + batch_size]
                with self.autocast():
                    chunk = fn(load(part), part).float().cpu()
                if i == 0:
                    out = torch.empty((len(rows), *chunk.shape[1:]), dtype=chunk.dtype)
                out[i : i + len(chunk)] = chunk
        finally:
            self.model.train(was_training)
        return out


class Method:
    """Base class. Subclasses set ``name``, override :meth:`training_step` and :meth:`evidence`."""

    name: ClassVar[str] = ""
    needs_trusted: ClassVar[bool] = False
    num_views: ClassVar[int] = 1

    #: The method's typed options (a frozen dataclass); see :mod:`labelclean.methods.options`.
    Options: ClassVar[type[MethodOptions]] = MethodOptions

    def __init__(self, options: MethodOptions | None = None) -> None:
        self.options = self.Options() if options is None else options
        if not isinstance(self.options, self.Options):
            raise TypeError(f"{self.name}: expected {self.Options.__name__}, "
                            f"found {type(self.options).__name__}")
        self.ctx: TrainContext | None = None

    @classmethod
    def build(cls, raw: dict[str, Any] | None = None) -> Method:
        """Build from ``--option`` values (names to JSON or text); bad values exit 2."""
        return cls(cls.Options.parse(dict(raw or {}), cls.name))

    @property
    def context(self) -> TrainContext:
        if self.ctx is None:
            raise RuntimeError("method used before setup()")
        return self.ctx

    def setup(self, ctx: TrainContext) -> None:
        self.ctx = ctx

    def parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the loop's optimizer updates (the model's, by default)."""
        return list(self.context.model.parameters())

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def training_rows(self) -> torch.Tensor | None:
        """Rows to train on this epoch (``None``: all). Meta methods hold out their reference set."""
        return None

    def training_step(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def wants_second_view(self) -> bool:
        """Whether the next batch needs its second augmented view (``Batch.x2``), asked by the
        loop before each step; by default on every step of a method with ``num_views = 2``."""
        return self.num_views > 1

    def after_step(self, batch: Batch) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> None:
        pass

    def wants_final_views(self) -> bool:
        """Whether :meth:`evidence` reads ``ctx.final_given`` (the loop computes it only then:
        two forward passes over the data)."""
        return False

    def wants_final_features(self) -> bool:
        """Whether :meth:`evidence` reads ``ctx.final_features`` (the final pass keeps them:
        ``(N, feature_dim)`` floats in memory)."""
        return False

    def evidence(self) -> Evidence:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"sample_ids": list(self.context.sample_ids)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("sample_ids") != list(self.context.sample_ids):
            raise ConfigError("checkpoint was made for different samples; start a new run")


METHODS: Registry[type[Method]] = Registry("method")


class Dynamics:
    """Running per-sample statistics of the training forward passes.

    Each time a sample is visited, the softmax of the logits the loop computed *before* that
    batch's update is added to a per-row sum. The mean over visits is a cheap, largely
    out-of-sample belief: every visit precedes the update on that sample, and averaging over
    the run weighs the early epochs, before the network memorises wrong labels, as much as the
    late ones.

    With the training ``labels`` it also keeps, at no extra forward cost:

    * the **area under the margin** (Pleiss et al., 2020, "Identifying Mislabeled Data using
      the Area Under the Margin Ranking"): the mean over visits of ``z[label] - max_{k != label}
      z[k]`` on the logits; a wrong label keeps a negative margin because the other samples of
      its true class pull it away;
    * the **late-phase** mean probability of the label: visits in the second half of training
      only, when the early, near-uniform epochs no longer dilute the belief. Only the label's
      probability is kept (the mean of a gathered entry is the gathered mean, so this is exact):
      one ``(N,)`` column instead of a second ``(N, C)`` table, 2 GB at a million rows and a
      thousand classes.
    """

    #: Fraction of training after which visits count as late-phase.
    LATE_FROM = 0.5

    def __init__(self, num_samples: int, num_classes: int, labels: torch.Tensor) -> None:
        # Means, not sums: bounded tables (labelclean.methods.state) at a million rows.
        self.all = RowMeans(num_samples, num_classes)
        self.late = RowMeans(num_samples, 1, dtype=torch.float32)  # p(label) only
        self.margin_sum = torch.zeros(num_samples, dtype=torch.float64)
        self.labels = labels.detach().cpu().long()

    @property
    def count(self) -> torch.Tensor:
        """``(N,)`` visits per row."""
        return self.all.count

    def update(self, rows: torch.Tensor, logits: torch.Tensor, late: bool = False) -> None:
        rows = rows.cpu()
        z = logits.detach().float()
        probs = z.softmax(1)
        labels = self.labels[rows].to(z.device)
        self.all.add(rows, probs)
        if late:
            self.late.add(rows, probs.gather(1, labels.view(-1, 1)))
        self.margin_sum.index_add_(0, rows, aum_margin(z, labels).double().cpu())

    def mean(self) -> torch.Tensor:
        """``(N, C)`` mean probabilities (float32); uniform for rows never visited."""
        return self.all.mean()

    def given(self) -> torch.Tensor:
        """``(N,)`` mean probability of the label over all visits (``1/C`` where never visited),
        read from the table without a dense copy."""
        return self.all.gather(self.labels)

    def late_given(self) -> torch.Tensor:
        """``(N,)`` mean probability of the label over late-phase visits (over all visits where
        there were none)."""
        return self.late.mean(fill=self.given()[:, None])[:, 0]

    def aum(self) -> torch.Tensor:
        """``(N,)`` area under the margin (mean logit margin of the label); 0 where never visited."""
        return self.margin_sum / self.count.clamp_min(1)

    def columns(self) -> dict[str, np.ndarray]:
        """The training-dynamics evidence as score columns (higher = more suspicious)."""
        return {"ce_suspicion": given_suspicion(self.given()),
                "late_suspicion": given_suspicion(self.late_given()),
                "aum": self.aum().numpy()}

    def state_dict(self) -> dict[str, Any]:
        return {"all": self.all.state_dict(), "late": self.late.state_dict(),
                "margin_sum": self.margin_sum.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.all.load_state_dict(state["all"])
        self.late.load_state_dict(state["late"])
        self.margin_sum.copy_(state["margin_sum"])


def aum_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z[label] - max_{k != label} z[k]`` per row, ``(B,)`` (AUM's margin)."""
    assigned = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, labels.view(-1, 1), float("-inf")).amax(1)
    return assigned - other


def belief_suspicion(belief: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Suspicion ``1 - belief[i, label_i]`` as a numpy array ``(N,)``.

    ``belief`` is ``(N, C)`` with rows summing to 1.
    """
    return given_suspicion(belief.gather(1, labels.view(-1, 1).to(belief.device)).squeeze(1))


def given_suspicion(p_given: torch.Tensor) -> np.ndarray:
    """Suspicion ``1 - p(label)`` from each row's probability of its label, ``(N,)`` numpy."""
    return (1.0 - p_given).clamp(0.0, 1.0).double().cpu().numpy()


def per_sample_soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-sum_c target_c log softmax(logits)_c`` for each row, ``(B,)``."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of :func:`per_sample_soft_ce`."""
    return per_sample_soft_ce(logits, target).mean()
