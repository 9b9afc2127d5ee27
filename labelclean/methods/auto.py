"""``auto``: the default. One training run, four methods' meta signals, one combined ranking."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from labelclean.methods.base import METHODS, Batch, Evidence, TrainContext, belief_evidence
from labelclean.methods.ieg import IEG
from labelclean.methods.meta import MetaMethod, Shared
from labelclean.methods.mlc import MLC
from labelclean.methods.mlnt import MLNT
from labelclean.methods.mslg import MSLG

MEMBERS: dict[str, type[MetaMethod]] = {"mlc": MLC, "mslg": MSLG, "ieg": IEG, "mlnt": MLNT}


@METHODS.register("auto")
class Auto(MetaMethod):
    """MLC, MSLG, IEG and MLNT in one training run, sharing every forward pass.

    Each step computes the batch's features and logits once, one trusted batch and its
    features once, and the second view once; each member then runs its own head-scope meta
    update (T for MLC, soft labels for MSLG, ω and λ for IEG, fast steps against the EMA
    teacher for MLNT) on those shared tensors and returns its loss. The network trains on the
    mean of the members' losses (one backward pass), so every member's correction shapes it.
    The members keep their own per-sample evidence, keyed by sample id.

    Combination: ``suspicion`` is the mean of the members' suspicions and the belief behind
    the suggestion is the mean of their beliefs (each is a class distribution). The scores
    table keeps each member's column, and ``agreement`` is the fraction of members whose own
    most likely class differs from the given label, with their names in ``doubted_by``.
    ``members`` (comma-separated) selects a subset.
    """

    name = "auto"
    num_views = 2

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {**super().default_options(), "members": "mlc,mslg,ieg,mlnt"}

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        names = [n.strip() for n in str(self.options["members"]).split(",") if n.strip()]
        unknown = [n for n in names if n not in MEMBERS]
        if unknown or not names:
            raise ValueError(f"auto members: expected some of {', '.join(MEMBERS)}, found {names}")
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
        z2 = None
        if "ieg" in self.members:
            z2 = self.members["ieg"].second_view(batch)  # type: ignore[attr-defined]
        if self.in_warmup:
            if z2 is not None:
                self.members["ieg"].record_pseudo(batch, z, z2)  # type: ignore[attr-defined]
            return F.cross_entropy(z, batch.y)
        shared = self.shared_inputs(batch)
        shared.z2 = z2
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
        labels = self.context.labels.cpu().numpy()
        parts = {name: m.evidence() for name, m in self.members.items()}
        suspicion = np.mean([e.suspicion for e in parts.values()], axis=0)
        belief = np.mean([e.belief for e in parts.values()], axis=0)
        _, suggested = belief_evidence(torch.from_numpy(belief), self.context.labels)
        doubting = np.stack([e.belief.argmax(1) != labels for e in parts.values()])
        names = np.array(list(parts))
        columns: dict[str, np.ndarray] = {}
        for e in parts.values():
            columns.update(e.columns)
        columns["agreement"] = doubting.mean(0)
        columns["doubted_by"] = np.array([",".join(names[doubting[:, i]]) for i in range(len(labels))],
                                         dtype=object)
        arrays = {k: v for e in parts.values() for k, v in e.arrays.items()}
        transition = parts["mlc"].transition if "mlc" in parts else None
        summary = {**self.base_summary(), "members": list(parts),
                   "member_summaries": {n: {k: v for k, v in e.summary.items() if k != "notes"}
                                        for n, e in parts.items()}}
        return Evidence(suspicion, suggested, belief, columns, transition, summary, arrays)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "members": {n: m.state_dict() for n, m in self.members.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for n, m in self.members.items():
            m.load_state_dict(state["members"][n])
            m.dynamics = self.dynamics
        self._sync_reference()
