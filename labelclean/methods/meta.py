"""Shared machinery of the meta-learning methods (MLC, MSLG, IEG, MLNT).

* A CE warm-up for the first ``warmup`` fraction of epochs (every paper warms up).
* A *reference set* of clean labels for the meta loss, held out of training after warm-up
  (a set the network trains on is fitted within a few epochs and its meta-gradients vanish),
  drawn in batches of ``reference_batch`` (default: half the training batch, to halve the cost
  of the reference forward): the trusted rows; without a trusted set,
  the ``reference_per_class`` lowest-loss samples of each class at the end of warm-up (as the
  MSLG code does when it has no clean data). Such picks are announced once, recorded in the
  summary, and never marked verified.
* Two scopes (``config.meta_scope``): ``head`` runs virtual steps on the linear head over
  detached features (closed forms where they exist; about one plain step of extra cost);
  ``full`` differentiates through the whole network with ``torch.func.functional_call``.
  Every virtual or reference forward uses copies of the BatchNorm buffers, so running
  statistics only ever change in the real training forward.
* :class:`~labelclean.methods.base.Dynamics` of the model's own predictions, kept by every method
  as auxiliary evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from labelclean.methods.base import Batch, Dynamics, Method, TrainContext
from labelclean.methods.functional import Params, functional_forward, head_params, linear
from labelclean.methods.options import MethodOptions, check


@dataclass
class Shared:
    """Per-step inputs that several methods can share (``auto`` computes each once).

    ``x_ref``/``y_ref``: a reference (trusted) batch; ``h_ref``: its train-mode features;
    ``z2``: logits of the second augmented view (no gradient unless a method asks);
    ``p_teacher``: an EMA teacher's probabilities for the batch (MLNT's consistency target).
    """

    x_ref: Tensor | None = None
    y_ref: Tensor | None = None
    h_ref: Tensor | None = None
    z2: Tensor | None = None
    p_teacher: Tensor | None = None


@dataclass(frozen=True)
class MetaOptions(MethodOptions):
    """Options every meta method shares.

    ``warmup``: fraction of epochs trained with plain CE first (every paper warms up).
    ``reference_per_class``: without a trusted set, lowest-loss picks per class after warm-up.
    ``reference_batch``: reference batch size (0: half the training batch).
    ``reference_every``: draw a new reference batch (and its features) every this many steps,
    and reuse it in between (1: every step, as the papers do).
    ``train_on_reference``: keep training on the reference rows after warm-up.
    """

    warmup: float = 0.2
    reference_per_class: int = 10
    reference_batch: int = 0
    reference_every: int = 1
    train_on_reference: bool = False

    def __post_init__(self) -> None:
        check(0 <= self.warmup < 1, f"warmup: expected a value in [0, 1), found {self.warmup}")
        check(self.reference_per_class >= 1,
              f"reference_per_class: expected >= 1, found {self.reference_per_class}")
        check(self.reference_batch >= 0, f"reference_batch: expected >= 0, found {self.reference_batch}")
        check(self.reference_every >= 1, f"reference_every: expected >= 1, found {self.reference_every}")


#: Fewer rows than this outside the reference set (a tiny or fully verified dataset) and the
#: reference set trains too: holding it out would leave nothing, or one batch, to learn from.
MIN_HELD_OUT_POOL = 8

#: Shared per-step inputs a method can declare in :attr:`MetaMethod.shared_needs`.
SHARED_INPUTS = ("reference", "second_view", "teacher_target")


class MetaMethod(Method):
    needs_trusted = True
    Options = MetaOptions
    options: MetaOptions
    #: ``auto`` combines every registered method that sets this (its file is the only change).
    auto_member: ClassVar[bool] = False
    #: Which of :data:`SHARED_INPUTS` the method's :meth:`step_loss` reads from ``Shared``.
    shared_needs: ClassVar[frozenset[str]] = frozenset({"reference"})

    def setup(self, ctx: TrainContext, dynamics: Dynamics | None = None) -> None:
        """``dynamics``: a record shared with other methods (``auto``'s members), else a new one."""
        super().setup(ctx)
        self.dynamics = dynamics or Dynamics(ctx.num_samples, ctx.num_classes, ctx.labels)
        warm = float(self.options.warmup)
        self.warmup_epochs = min(ctx.epochs - 1, max(1 if warm > 0 else 0, round(warm * ctx.epochs)))
        verified = torch.where(ctx.verified.cpu())[0]
        self.reference = verified
        self.reference_source = "trusted" if len(verified) else "pending"
        if not len(verified) and self.warmup_epochs == 0:
            self.warmup_epochs = 1 if ctx.epochs > 1 else 0
        self.scope = ctx.config.meta_scope
        self._told_pool = False
        self._reference_cache: tuple[int, int, Shared] | None = None

    # -- phases -------------------------------------------------------------------------
    @property
    def in_warmup(self) -> bool:
        return self.context.epoch < self.warmup_epochs

    @property
    def plain_step(self) -> bool:
        """Train with plain cross-entropy this step: in warm-up, or with no reference set."""
        return self.in_warmup or len(self.reference) == 0

    def on_epoch_start(self, epoch: int) -> None:
        if self.reference_source == "pending" and epoch >= self.warmup_epochs:
            self._pick_reference()

    def _pick_reference(self) -> None:
        """Lowest-loss samples per class under the warmed-up model (not verified labels)."""
        ctx = self.context
        k = self.options.reference_per_class
        probs = ctx.predict()
        labels = ctx.labels.cpu()
        loss = -torch.log(probs.gather(1, labels.view(-1, 1)).squeeze(1).clamp_min(1e-12))
        rows = []
        for c in range(ctx.num_classes):
            members = torch.where(labels == c)[0]
            # At most half of a class: the rest must stay in training to be audited.
            take = min(k, len(members) // 2)
            rows.append(members[torch.argsort(loss[members], stable=True)[:take]])
        self.reference = torch.cat(rows)
        self.reference_source = "selected"
        if not len(self.reference):
            ctx.notice(f"{self.name}: no trusted set and too few samples per class to pick a "
                       "reference set; it trains as plain cross-entropy")
            return
        ctx.notice(
            f"{self.name}: no trusted set, so the {k} lowest-loss samples per class after "
            f"warm-up (at most half of a class; {len(self.reference)} in all) serve as its "
            "reference set; they are not verified labels"
        )

    def training_rows(self) -> Tensor | None:
        """After warm-up the reference set is held out of training, as in the papers.

        A reference set the model also trains on is fitted within a few epochs, after which
        the meta loss and every meta-gradient vanish.
        """
        if self.in_warmup or self.reference_source == "pending" or self.options.train_on_reference:
            return None
        keep = torch.ones(self.context.num_samples, dtype=torch.bool)
        keep[self.reference] = False
        pool = torch.where(keep)[0]
        if len(pool) < MIN_HELD_OUT_POOL:
            if not self._told_pool:
                self._told_pool = True
                self.context.notice(
                    f"{self.name}: only {len(pool)} rows are outside its reference set, so it "
                    "trains on the reference set too (its meta-gradients are weaker)")
            return None
        return pool

    def training_step(self, batch: Batch) -> Tensor:
        h, z = self.forward(batch)
        if self.plain_step:
            return F.cross_entropy(z, batch.y)
        return self.step_loss(batch, h, z, self.shared_inputs(batch))

    def step_loss(self, batch: Batch, h: Tensor, z: Tensor, shared: Shared) -> Tensor:
        """The method's meta updates and training loss after warm-up, from the batch's
        features ``h`` and logits ``z`` (graph attached) and the shared inputs."""
        raise NotImplementedError

    def shared_inputs(self, batch: Batch) -> Shared:
        """A reference batch and its features, drawn anew every ``reference_every`` steps of an
        epoch (each epoch starts with a new draw, so a resumed run draws as an unbroken one)."""
        ctx = self.context
        every = int(self.options.reference_every)
        cached = self._reference_cache
        if cached is not None and cached[0] == ctx.epoch and ctx.step - cached[1] < every:
            ref = cached[2]
            return Shared(ref.x_ref, ref.y_ref, ref.h_ref)
        x_ref, y_ref = self.reference_batch()
        h_ref = self.reference_features(x_ref) if self.scope == "head" else None
        self._reference_cache = (ctx.epoch, ctx.step, Shared(x_ref, y_ref, h_ref)) if every > 1 else None
        return Shared(x_ref, y_ref, h_ref)

    # -- hooks a combining method (``auto``) uses instead of knowing its members --------
    def ready(self) -> bool:
        """Whether :meth:`step_loss` applies this step (after warm-up, by default)."""
        return not self.plain_step

    def observe_warmup(self, batch: Batch, z: Tensor, z2: Tensor) -> None:
        """See a warm-up batch's logits (``z2``: the second view's); records nothing by default."""

    def second_view_needs_grad(self) -> bool:
        """Whether the second view's logits must carry a gradient into the loss."""
        return False

    def view_teacher(self) -> torch.nn.Module | None:
        """A teacher network whose output on the second view may stand in for the student's."""
        return None

    def adopt_reference(self, rows: Tensor, source: str) -> None:
        """Take the reference set a combining method chose (``source``: trusted/selected)."""
        self.reference = rows
        self.reference_source = source

    # -- reference batches --------------------------------------------------------------
    def reference_rows(self) -> Tensor:
        ctx = self.context
        size = self.options.reference_batch or max(8, ctx.batch_size // 2)
        if len(self.reference) == 0:
            raise RuntimeError("no reference samples")
        pick = torch.randint(0, len(self.reference), (size,), generator=ctx.generator)
        return self.reference[pick]

    def reference_batch(self) -> tuple[Tensor, Tensor]:
        rows = self.reference_rows()
        return self.context.load(rows, True), self.context.labels[rows.to(self.context.device)]

    @torch.no_grad()
    def reference_features(self, x: Tensor) -> Tensor:
        """Train-mode features of a reference batch, with BatchNorm statistics untouched."""
        features = self.context.model.features
        return functional_forward(features, dict(features.named_parameters()), x)

    # -- scope helpers ------------------------------------------------------------------
    def theta(self) -> Params:
        """The parameters a virtual step moves: head copies, or the live network parameters."""
        if self.scope == "head":
            return head_params(self.context.model)
        return dict(self.context.model.named_parameters())

    def meta_ce(self, x_ref: Tensor | None, h_ref: Tensor | None, y_ref: Tensor | None) -> Any:
        """The meta loss ``θ̂ -> mean CE`` on the reference batch, in the method's scope."""
        assert x_ref is not None and y_ref is not None, "no reference batch"
        if self.scope == "head":
            assert h_ref is not None
            return lambda fast: F.cross_entropy(linear(fast, h_ref), y_ref)
        model = self.context.model
        return lambda fast: F.cross_entropy(functional_forward(model, fast, x_ref), y_ref)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Real forward of the training batch: features ``h`` and logits ``z``."""
        model = self.context.model
        h = model.features(batch.x)
        z = model.head(h)
        self.dynamics.update(batch.index, z, self.context.progress() >= Dynamics.LATE_FROM)
        return h, z

    def virtual_inputs(self, h: Tensor, z: Tensor) -> tuple[Params, Any]:
        """``θ`` and a function ``θ -> logits`` of the training batch for the virtual step."""
        theta = self.theta()
        if self.scope == "head":
            hd = h.detach()
            return theta, lambda: linear(theta, hd)
        return theta, lambda: z

    def inner_lr(self) -> float:
        lr = getattr(self.options, "inner_lr", None)
        if lr:
            return float(lr)
        assert self.context.optimizer is not None
        return float(self.context.optimizer.param_groups[0]["lr"])

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "dynamics": self.dynamics.state_dict(),
                "reference": self.reference.clone(), "reference_source": self.reference_source}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.dynamics.load_state_dict(state["dynamics"])
        self.reference = state["reference"]
        self.reference_source = state["reference_source"]

    def base_summary(self) -> dict[str, Any]:
        notes = []
        if self.reference_source == "selected":
            notes.append(f"{self.name}: reference set selected by low loss after warm-up "
                         f"({len(self.reference)} samples), not verified")
        return {"reference_source": self.reference_source,
                "reference_size": len(self.reference), "warmup_epochs": self.warmup_epochs,
                "meta_scope": self.scope, "notes": notes}
