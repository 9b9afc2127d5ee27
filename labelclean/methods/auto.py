"""``auto``: the default. One training run, four methods' meta signals, one combined ranking."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from labelclean.methods.base import METHODS, Batch, Evidence, TrainContext, belief_evidence
from labelclean.methods.ieg import IEG
from labelclean.methods.meta import MetaMethod
from labelclean.methods.mlc import MLC
from labelclean.methods.mlnt import MLNT
from labelclean.methods.mslg import MSLG
from labelclean.scoring import RELABEL_POSTERIOR, fit_mixture

MEMBERS: dict[str, type[MetaMethod]] = {"mlc": MLC, "mslg": MSLG, "ieg": IEG, "mlnt": MLNT}


def member_posteriors(suspicion: dict[str, np.ndarray], fit_rows: np.ndarray) -> dict[str, np.ndarray]:
    """Each member's ``P(label wrong | its suspicion)`` from its own two-component mixture.

    Members score on different scales (MLC's posteriors sit near 0, IEG's fractions near 0.5),
    so their raw scores are not averaged: each is first calibrated by the same mixture the
    audit uses for its flag threshold, fitted on ``fit_rows`` (the unverified samples).
    """
    out = {}
    for name, s in suspicion.items():
        mixture = fit_mixture(s[fit_rows]) if fit_rows.sum() >= 4 else None
        out[name] = mixture.posterior(s) if mixture is not None else np.zeros_like(s, dtype=np.float64)
    return out


@METHODS.register("auto")
class Auto(MetaMethod):
    """MLC, MSLG, IEG and MLNT in one training run, sharing every forward pass.

    Each step computes the batch's features and logits once, one trusted batch and its
    features once, and the second view once; each member then runs its own head-scope meta
    update (T for MLC, soft labels for MSLG, ω and λ for IEG, fast steps against the EMA
    teacher for MLNT) on those shared tensors and returns its loss. The network trains on the
    mean of the members' losses (one backward pass), so every member's correction shapes it.
    The members keep their own per-sample evidence, keyed by sample id.

    Combination (chosen by measurement, docs/benchmarks.md): each member's suspicion is
    calibrated to ``P(label wrong)`` by its own two-component mixture
    (:func:`member_posteriors`), and ``p_wrong`` is the mean of those probabilities; its sum is
    the estimated number of wrong labels (that many are flagged), it drives the relabel
    decision (>= 0.9), and it ranks the samples (ties broken by the mean raw score). A plain mean of raw scores ranked as well but mixed scales, which
    broke the flag threshold on CIFAR-10 (2,428 flagged for 900 errors, F1 0.52); the mean of
    calibrated probabilities flagged 916 (F1 0.725, above every member alone). A flagged
    sample is relabelled (with a clear alternative) when at least half the members put its
    P(wrong) at 0.9 or more: a member whose components overlap never reaches 0.9, so the
    mean would block every relabel (2 of 916 on CIFAR-10); the vote relabelled 413 at 65%
    precision and raised label accuracy from 0.820 to 0.867 there. The suggestion comes from
    the mean of the members' beliefs. The scores table keeps each member's column,
    ``agreement`` is the fraction of members whose own most likely class differs from the
    given label, with their names in ``doubted_by``; the weights are in the summary.
    ``members`` (comma-separated) selects a subset.

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

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {**super().default_options(), "members": "mlc,mslg,ieg,mlnt", "second_view": "teacher"}

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        names = [n.strip() for n in str(self.options["members"]).split(",") if n.strip()]
        unknown = [n for n in names if n not in MEMBERS]
        if unknown or not names:
            raise ValueError(f"auto members: expected some of {', '.join(MEMBERS)}, found {names}")
        if self.options["second_view"] not in ("teacher", "student"):
            raise ValueError(f"auto second_view: expected teacher or student, "
                             f"found {self.options['second_view']!r}")
        warmup = float(self.options["warmup"])
        self.members = {n: MEMBERS[n](warmup=warmup) for n in names}
        for m in self.members.values():
            m.setup(ctx)
            m.dynamics = self.dynamics  # one forward, one record
            m.reference = self.reference
            m.reference_source = self.reference_source
            m.warmup_epochs = self.warmup_epochs
        if "mlnt" in self.members and self.reference_source == "pending":
            self.members["mlnt"].reference_source = "none"

    def _sync_reference(self) -> None:
        for name, m in self.members.items():
            if name == "mlnt" and self.reference_source != "trusted":
                continue
            m.reference = self.reference
            m.reference_source = self.reference_source

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._sync_reference()
        for m in self.members.values():
            if isinstance(m, MLNT):
                m.on_epoch_start(epoch)

    def training_step(self, batch: Batch) -> Tensor:
        h, z = self.forward(batch)
        ieg, mlnt = self.members.get("ieg"), self.members.get("mlnt")
        if self.in_warmup:
            if isinstance(ieg, IEG):
                ieg.record_pseudo(batch, z, z)  # one view during the CE warm-up
            return F.cross_entropy(z, batch.y)
        shared = self.shared_inputs(batch)
        if isinstance(ieg, IEG):
            use_teacher = (self.options["second_view"] == "teacher" and isinstance(mlnt, MLNT)
                           and mlnt.iteration >= 0 and not ieg.options["consistency"])
            if use_teacher:
                assert batch.x2 is not None and isinstance(mlnt, MLNT)
                with torch.no_grad():
                    shared.z2 = mlnt.teacher(batch.x2)
                shared.p_teacher = shared.z2.softmax(1)
            else:
                shared.z2 = ieg.second_view(batch)
        losses = []
        for name, m in self.members.items():
            if isinstance(m, MLNT) and m.iteration < 0:
                losses.append(F.cross_entropy(z, batch.y))
            else:
                losses.append(m.step_loss(batch, h, z, shared))
        return torch.stack(losses).mean()

    def after_step(self, batch: Batch) -> None:
        for m in self.members.values():
            m.after_step(batch)

    def evidence(self) -> Evidence:
        ctx = self.context
        labels = ctx.labels.cpu().numpy()
        parts = {name: m.evidence() for name, m in self.members.items()}
        free = ~ctx.verified.cpu().numpy()
        posteriors = member_posteriors({n: e.suspicion for n, e in parts.items()}, free)
        p_wrong = np.mean(list(posteriors.values()), axis=0)
        raw = np.mean([e.suspicion for e in parts.values()], axis=0)
        # Ties (posteriors saturate at 0 and 1) are broken by the mean raw score.
        suspicion = np.clip(0.999 * p_wrong + 0.001 * raw, 0.0, 1.0)
        belief = np.mean([e.belief for e in parts.values()], axis=0)
        _, suggested = belief_evidence(torch.from_numpy(belief), ctx.labels)
        doubting = np.stack([e.belief.argmax(1) != labels for e in parts.values()])
        names = np.array(list(parts))
        dynamics_suspicion, _ = belief_evidence(self.dynamics.mean(), ctx.labels)
        columns: dict[str, np.ndarray] = {"ce_suspicion": dynamics_suspicion}
        for n, e in parts.items():
            columns.update(e.columns)
            columns[f"{n}_p_wrong"] = posteriors[n]
        columns["agreement"] = doubting.mean(0)
        columns["doubted_by"] = np.array([",".join(names[doubting[:, i]]) for i in range(len(labels))],
                                         dtype=object)
        arrays = {k: v for e in parts.values() for k, v in e.arrays.items()}
        transition = parts["mlc"].transition if "mlc" in parts else None
        summary = {**self.base_summary(), "members": list(parts),
                   "member_estimated_errors": {n: int(round(float(p[free].sum()))) for n, p in posteriors.items()},
                   "member_summaries": {n: {k: v for k, v in e.summary.items() if k != "notes"}
                                        for n, e in parts.items()}}
        votes = np.sum([p >= RELABEL_POSTERIOR for p in posteriors.values()], axis=0)
        strong = votes >= math.ceil(len(posteriors) / 2)
        columns["strong_votes"] = votes
        return Evidence(suspicion, suggested, belief, columns, transition, summary, arrays,
                        p_wrong=p_wrong, strong=strong)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "members": {n: m.state_dict() for n, m in self.members.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for n, m in self.members.items():
            m.load_state_dict(state["members"][n])
            m.dynamics = self.dynamics
        self._sync_reference()
