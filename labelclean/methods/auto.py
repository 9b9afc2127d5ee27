"""``auto``: the default. One training run, the meta methods' signals, one combined ranking."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from labelclean.errors import UsageError
from labelclean.methods.base import METHODS, Batch, Dynamics, TrainContext, given_suspicion
from labelclean.methods.meta import MetaMethod, MetaOptions, Shared
from labelclean.methods.options import check, split_nested
from labelclean.methods.probe import MIN_ROWS, head_suspicions, rank_mean
from labelclean.scoring import Evidence, rank_posteriors


def member_names() -> list[str]:
    """Registered methods that ``auto`` can combine, by name."""
    return [n for n in METHODS.names() if getattr(METHODS.get(n), "auto_member", False)]


@dataclass(frozen=True)
class AutoOptions(MetaOptions):
    """``members``: comma-separated member names, or ``all``. ``second_view``: ``teacher``
    (a member's teacher on the second view, one forward less) or ``student`` (the papers').
    ``rank``: what orders the samples while the members' calibrated posteriors set the level:
    ``final+probe`` (the default: the mean rank of ``final`` and of two linear heads
    cross-fitted on the final model's features, one plain and one noise-corrected through an
    estimated transition matrix, :mod:`labelclean.methods.probe`), ``final`` (the final
    model's probability of the label over the un-augmented image and two shifted views); where
    the inputs have no shifted views (vectors, ``--augment none``) the late-phase belief takes
    the final views' place (with ``final+probe``, the heads are cross-fitted on the vectors
    themselves); ``late`` (the late-phase training belief) or ``members`` (the mean of the
    members' posteriors). ``train_on``: the members whose losses train the network
    (comma-separated, ``all``, or ``ce``: plain cross-entropy on the given labels, every member
    a bystander); the others still run their meta steps and keep their evidence, but the
    network does not step on their losses. ``auto`` (the default), with ``rank=final+probe``:
    ``ce`` where the audit has an exam that can choose the ranking
    (``TrainContext.exam_can_choose``) or one that cannot but says the noise is light
    (``TrainContext.exam_light``, :func:`labelclean.exam.says_light`); ``all`` otherwise.
    Plain cross-entropy gives the network a better view of the images under
    instance-dependent noise, and lets it learn a class-level flip; the members' losses keep
    the flip out of the network, but the corrected head finds it either way, and the exam then
    orders by that head. Without an exam nothing would choose it, so the members train the
    network (docs/benchmarks.md, "The exam chooses the ranking"), unless the exam says the
    noise is light: at 10% the network barely learns a flip (CIFAR-10 flip-to-one lost 0.004
    AUROC), and human-like and instance noise ranked better (docs/benchmarks.md, "Light
    noise: plain training"). Where the features are fixed (``--features`` vectors, or a frozen
    encoder: ``TrainContext.features_fixed``) there is no view of the images to protect, only
    a head that plain cross-entropy lets fit the wrong labels, so ``auto`` resolves to ``all``
    with or without an exam (CIFAR-10 embeddings with an exam, three seeds: the cross-fitted
    head −0.004 to +0.011 AUROC, +0.003 on average; docs/benchmarks.md, "Fixed features: the
    members train the head").
    Measured, not the default:
    training on MLC and MLNT only raised the final-view AUROC on CIFAR-10 human 20% (0.660 ->
    0.682 on one draw, 0.700 -> 0.703 on another) and lowered it on flip-to-one (0.739 ->
    0.684), where IEG's and MSLG's corrections are what keep the network from learning the
    class-level flip (docs/benchmarks.md, "Training on a subset of the members").
    ``reference_every`` (2 here, 1 in the single methods and the papers): each reference batch
    and its features serve two consecutive steps, which saves half the reference forwards
    (about 4% of the run); on eleven CIFAR-10 audits every ranking moved by at most 0.005
    AUROC (docs/benchmarks.md, "Reference batches every second step").
    ``bystander_every`` (2): where no member's loss trains the network (``train_on`` resolved
    to ``ce``), the members run their meta steps, and the second view is drawn, on every this
    many-th batch only (counted over the run); the network steps on plain cross-entropy on
    every batch either way. Their evidence then sets only the level of the ranking's posteriors
    (which the exam's prediction-powered rate corrects) and their relabel votes. On CIFAR-10
    with an exam this took the default from 1.51x to 1.40x one ``ce`` run (median wall time)
    with every ranking within 0.006 AUROC (docs/benchmarks.md, "Bystander members every second
    batch"). 1: every batch. Ignored where members train the network."""

    reference_every: int = 2
    members: str = "all"
    second_view: Literal["teacher", "student"] = "teacher"
    rank: Literal["final+probe", "final", "late", "members"] = "final+probe"
    train_on: str = "auto"
    bystander_every: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.bystander_every >= 1, f"bystander_every: expected >= 1, found {self.bystander_every}")

    def selected(self) -> list[str]:
        return _names(self.members)

    def resolved_train_on(self, exam_can_choose: bool, exam_light: bool = False,
                          features_fixed: bool = False) -> str:
        """``train_on`` with ``auto`` resolved: ``ce`` where the run trains its features and an
        exam can choose the ranking among the heads' orders or says the noise is light, ``all``
        otherwise."""
        return self.train_on_choice(exam_can_choose, exam_light, features_fixed)[0]

    def train_on_choice(self, exam_can_choose: bool, exam_light: bool = False,
                        features_fixed: bool = False) -> tuple[str, str]:
        """:meth:`resolved_train_on` and why (the summary's ``trained_on_because``)."""
        text = self.train_on.strip()
        if text != "auto":
            return text, "--option train_on"
        if self.rank != "final+probe":
            return "all", f"rank={self.rank}: no heads for an exam to choose"
        if features_fixed:
            return "all", ("the features are fixed (vectors or a frozen encoder): the members "
                           "keep the head from fitting wrong labels, at no cost to its view")
        if exam_can_choose:
            return "ce", "the exam can choose the ranking"
        if exam_light:
            return "ce", "the exam cannot rank, and says the noise is light"
        return "all", "no exam that can choose the ranking"

    def trained_on(self, members: list[str], exam_can_choose: bool = False,
                   exam_light: bool = False, features_fixed: bool = False) -> list[str]:
        """The members whose losses train the network; empty for plain cross-entropy."""
        text = self.resolved_train_on(exam_can_choose, exam_light, features_fixed)
        if text == "ce":
            return []
        return members if text == "all" else _names(text)


def _names(text: str) -> list[str]:
    if text.strip() == "all":
        return member_names()
    return [n.strip() for n in text.split(",") if n.strip()]


@METHODS.register("auto")
class Auto(MetaMethod):
    """MLC, MSLG, IEG and MLNT in one training run, sharing every forward pass.

    Each step computes the batch's features and logits once, one trusted batch and its
    features once, and the second view once; each member then runs its own head-scope meta
    update (T for MLC, soft labels for MSLG, ω and λ for IEG, fast steps against the EMA
    teacher for MLNT) on those shared tensors and returns its loss. The network trains on the
    mean of the members' losses (one backward pass), so every member's correction shapes it.
    The members keep their own per-sample evidence, keyed by sample id.

    Combination: ``auto`` hands each member's suspicion to the scoring module
    (``Evidence.members``), which calibrates each by its own mixture, combines them by the mean
    probability and relabels by a vote of half the members
    (:func:`labelclean.scoring.combine_members`; the measurements behind the rule are there
    and in docs/methods.md). The belief is the mean of the members' beliefs. The scores table keeps each member's column,
    ``agreement`` is the fraction of members whose own most likely class differs from the
    given label, with their names in ``doubted_by``; the weights are in the summary.
    ``members`` (comma-separated, default ``all``) selects a subset; ``--option mlc.mode=reset``
    sets a member's own option. Members are the registered methods with ``auto_member``; each
    declares the shared inputs it reads (``shared_needs``), so ``auto`` knows none by name.

    Deviation to save a forward pass (``second_view="teacher"``, the default): after the
    warm-up, IEG's second view is MLNT's EMA teacher applied to the second augmentation, and
    the same probabilities are MLNT's consistency target (the official codes use the student
    on the second view, and the teacher on the first view). With CIFAR-10 (2,000 images,
    uniform 20%) this gave the same F1 (0.613 vs 0.615) and AUROC (0.872 vs 0.873) for 14%
    less training time; ``second_view="student"`` restores the papers' inputs. During the CE
    warm-up IEG's pseudo labels come from the one view.
    """

    name = "auto"
    num_views = 2
    Options = AutoOptions
    options: AutoOptions

    def __init__(self, options: AutoOptions | None = None,
                 members: dict[str, MetaMethod] | None = None) -> None:
        super().__init__(options)
        if members is None:
            members = {n: METHODS.get(n).build({"warmup": self.options.warmup})  # type: ignore[misc]
                       for n in self._member_names()}
        self.members: dict[str, MetaMethod] = members
        #: The members whose losses train the network (``train_on`` resolved in :meth:`setup`).
        self.trained: list[str] = []
        self.trained_because = ""

    def _member_names(self) -> list[str]:
        known = member_names()
        names = self.options.selected()
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise UsageError(f"--option auto.members: expected some of {', '.join(known)} or all, "
                             f"found {self.options.members!r}")
        trained = self.options.trained_on(names)
        plain = self.options.resolved_train_on(False) == "ce"
        if not (trained or plain) or any(n not in names for n in trained):
            raise UsageError(f"--option train_on: expected some of the members ({', '.join(names)}), "
                             f"all, ce or auto, found {self.options.train_on!r}")
        return names

    @classmethod
    def build(cls, raw: dict[str, Any] | None = None) -> Auto:
        """``--option warmup=0.3 --option mlc.mode=reset``: auto's own and its members' options."""
        own, nested = split_nested(dict(raw or {}))
        auto = cls(AutoOptions.parse(own, cls.name), members={})
        names = auto._member_names()
        stray = sorted(set(nested) - set(names))
        if stray:
            raise UsageError(f"--option {stray[0]}.*: {stray[0]!r} is not a member of auto "
                             f"(members: {', '.join(names)})")
        for n in names:
            member_cls = METHODS.get(n)
            options = member_cls.Options.parse({"warmup": auto.options.warmup, **nested.get(n, {})}, n)
            auto.members[n] = member_cls(options)  # type: ignore[assignment]
        return auto

    def setup(self, ctx: TrainContext, dynamics: Dynamics | None = None) -> None:
        super().setup(ctx, dynamics)
        self.needs = frozenset().union(*(m.shared_needs for m in self.members.values()))
        for m in self.members.values():
            m.setup(ctx, dynamics=self.dynamics)  # one forward, one record
            m.warmup_epochs = self.warmup_epochs
        self._sync_reference()
        situation = (ctx.exam_can_choose, ctx.exam_light, ctx.features_fixed)
        self.trained = self.options.trained_on(list(self.members), *situation)
        self.trained_because = self.options.train_on_choice(*situation)[1]

    def _sync_reference(self) -> None:
        for m in self.members.values():
            m.adopt_reference(self.reference, self.reference_source)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._sync_reference()
        for m in self.members.values():
            m.on_epoch_start(epoch)

    def second_view(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """Logits of the second view, and the teacher's probabilities when a teacher gave them."""
        assert batch.x2 is not None
        members = self.members.values()
        teachers = [t for m in members if (t := m.view_teacher()) is not None]
        grad = any(m.second_view_needs_grad() for m in members)
        if self.options.second_view == "teacher" and teachers and not grad:
            with torch.no_grad():
                z2 = teachers[0](batch.x2)
            return z2, z2.softmax(1)
        if grad:
            return self.context.model(batch.x2), None
        with torch.no_grad():
            return self.context.model(batch.x2), None

    @property
    def members_step_every(self) -> int:
        """The members run their meta steps on every this many-th batch (after the warm-up):
        1 where their losses train the network, ``bystander_every`` where none does."""
        return 1 if self.trained else int(self.options.bystander_every)

    def members_step(self) -> bool:
        """Whether the members step on the current batch; counted by the run's step, so a
        resumed run keeps the same batches."""
        return self.context.step % self.members_step_every == 0

    def wants_second_view(self) -> bool:
        return not self.plain_step and "second_view" in self.needs and self.members_step()

    def training_step(self, batch: Batch) -> Tensor:
        h, z = self.forward(batch)
        if self.plain_step:
            for m in self.members.values():
                m.observe_warmup(batch, z, z)  # one view during the CE warm-up
            return F.cross_entropy(z, batch.y)
        if not self.members_step():  # bystanders only, resting this batch
            return F.cross_entropy(z, batch.y)
        shared = self.shared_inputs(batch) if "reference" in self.needs else Shared()
        if "second_view" in self.needs:
            shared.z2, shared.p_teacher = self.second_view(batch)
        losses = []
        for name, m in self.members.items():
            loss = m.step_loss(batch, h, z, shared) if m.ready() else F.cross_entropy(z, batch.y)
            if name in self.trained:  # the others update their own state (soft labels, weights) only
                losses.append(loss)
        if not losses:  # train_on=ce: the members correct nothing the network learns
            return F.cross_entropy(z, batch.y)
        return torch.stack(losses).mean()

    def after_step(self, batch: Batch) -> None:
        for m in self.members.values():
            m.after_step(batch)

    def wants_final_views(self) -> bool:
        return self.options.rank in ("final", "final+probe")

    def wants_final_features(self) -> bool:
        return self.options.rank == "final+probe"

    def evidence(self) -> Evidence:
        ctx = self.context
        labels = ctx.labels.cpu().numpy()
        columns: dict[str, np.ndarray] = self.dynamics.columns()
        suspicions: dict[str, np.ndarray] = {}
        doubting: list[np.ndarray] = []
        arrays: dict[str, np.ndarray] = {}
        summaries: dict[str, dict[str, Any]] = {}
        transition = None
        transition_from: str | None = None
        belief: np.ndarray | None = None
        for name, m in self.members.items():  # one member's dense belief in memory at a time
            e = m.evidence()
            doubting.append(e.belief.argmax(1) != labels)
            if belief is None:
                belief = np.asarray(e.belief, dtype=np.float32)
            else:
                belief += e.belief
            suspicions[name] = e.suspicion
            columns.update(e.columns)
            arrays.update(e.arrays)
            if transition is None and e.transition is not None:
                transition, transition_from = e.transition, name
            summaries[name] = {k: v for k, v in e.summary.items() if k != "notes"}
            del e
        assert belief is not None
        belief /= len(suspicions)
        raw = np.mean(list(suspicions.values()), axis=0)
        doubted = np.stack(doubting)
        names = np.array(list(suspicions))
        columns["agreement"] = doubted.mean(0)
        columns["doubted_by"] = np.array([",".join(names[doubted[:, i]]) for i in range(len(labels))],
                                         dtype=object)
        rank_by, ranked_by = None, "members' mean posterior"
        rank_alternatives: dict[str, np.ndarray] = {}
        timing: dict[str, Any] = {}
        if self.wants_final_views() and ctx.final_given is not None:
            columns["final_views_suspicion"] = given_suspicion(ctx.final_given)
            rank_by, ranked_by = columns["final_views_suspicion"], "final model, shifted views"
        elif self.options.rank in ("final", "final+probe", "late"):
            rank_by, ranked_by = columns["late_suspicion"], "late-phase belief"
        if (self.options.rank == "final+probe" and rank_by is not None
                and ctx.final_features is not None and len(labels) >= MIN_ROWS):
            started = time.perf_counter()
            # Features the run did not train: the plain head is weighted by the ranking so far.
            heads = head_suspicions(ctx.final_features, ctx.labels.cpu(), ctx.num_classes,
                                    ctx.verified.cpu().numpy(), seed=ctx.config.seed,
                                    prior=rank_by if ctx.features_fixed else None)
            timing["probe_seconds"] = round(time.perf_counter() - started, 3)
            columns["probe_suspicion"] = heads.plain
            columns["probe_corrected_suspicion"] = heads.corrected
            # The run's transition matrix: the heads' EM estimate of T, not MLC's. MLC's
            # diagonal sat at 0.89-0.90 whatever the noise (CIFAR-10, 20-40% wrong); the heads'
            # was nearer the realised matrix on five of seven settings (docs/benchmarks.md,
            # "The run's transition matrix").
            transition, transition_from = heads.transition, "noise-corrected head (EM)"
            timing["probe_nll"] = {"plain": round(heads.plain_nll, 6),
                                   "corrected": round(heads.corrected_nll, 6)}
            timing["probe_weighted"] = ctx.features_fixed  # the plain head, by the ranking so far
            # With an exam that can choose, the corrected head is among its alternatives
            # (below), and the default leaves it out: the likelihood gate does not tell a
            # class-level flip from human-like noise, and where the corrected head joined on
            # human-like or uniform noise it pulled the order down (MNIST human 40%: 0.976 ->
            # 0.973; docs/benchmarks.md, "The corrected head: the exam's alternative only").
            # Without one, it joins only where its noise model predicts the held-out given
            # labels better than the plain head (class-level noise); under instance-dependent
            # noise its T only absorbs the features' confusions, and it ranks worse.
            # On fixed features the late-phase belief is the head's fit to its own training
            # vectors (the training loss), and the plain head already carries it as its
            # weights; with an exam, mean-ranking the two pulled the head down by up to 0.010
            # AUROC (CIFAR-10 embeddings, docs/benchmarks.md, "Fixed features: the members
            # train the head"), so the head orders alone.
            # With an exam, the corrected head's paired alternative joins it to the default's
            # base (below).
            paired = ("final views and corrected head", rank_by)
            if ctx.exam_can_choose and ctx.features_fixed:
                combined = heads.plain
                paired = ("plain and corrected heads", heads.plain)
                ranked_by = ("a cross-fitted head weighted by the late-phase belief (the "
                             "noise-corrected head is the exam's alternative)")
            elif ctx.exam_can_choose:
                combined = rank_mean(rank_by, heads.plain)
                ranked_by += (" and a cross-fitted head (mean rank; the noise-corrected head is "
                              "the exam's alternative)")
            elif heads.corrected_nll < heads.plain_nll:
                combined = rank_mean(rank_by, heads.plain, heads.corrected)
                ranked_by += " and two cross-fitted heads, plain and noise-corrected (mean rank)"
            else:
                combined = rank_mean(rank_by, heads.plain)
                ranked_by += (" and a cross-fitted head (mean rank; the noise-corrected head "
                              "fitted the labels worse)")
            # Where the audit has an exam that can rank, it may order by the corrected head
            # instead (alone, or with the final views) if that ranks the exam's wrong labels
            # better: under a class-level flip it does by far (docs/benchmarks.md, "The exam
            # chooses the ranking"). Every order on the first ranking's scale (a --threshold
            # keeps its meaning).
            if ctx.exam_can_choose:
                alternatives = {"corrected head": heads.corrected,
                                paired[0]: rank_mean(paired[1], heads.corrected)}
                rank_alternatives = {k: rank_posteriors(v, rank_by) for k, v in alternatives.items()}
            rank_by = rank_posteriors(combined, rank_by)
        summary = {**self.base_summary(), "members": list(suspicions), "member_summaries": summaries,
                   "ranked_by": ranked_by, "transition_from": transition_from,
                   "trained_on": self.trained or "ce", "trained_on_because": self.trained_because,
                   "members_step_every": self.members_step_every,
                   **timing}
        return Evidence(raw, belief, columns, transition, summary, arrays, members=suspicions,
                        rank_by=rank_by, rank_alternatives=rank_alternatives)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "members": {n: m.state_dict() for n, m in self.members.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for n, m in self.members.items():
            m.load_state_dict(state["members"][n])
            m.dynamics = self.dynamics
        self._sync_reference()
