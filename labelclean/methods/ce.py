"""``ce``: plain cross-entropy training, the floor every other method is measured against."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from labelclean.methods.base import METHODS, Batch, Dynamics, Evidence, Method, TrainContext, belief_suspicion


@METHODS.register("ce")
class CrossEntropy(Method):
    """Train with cross-entropy on the given (or trusted) labels and score by training dynamics.

    Scores are the mean, over all visits during training, of the softmax the model gives each
    sample in the forward pass *before* it updates on that sample's batch (:class:`Dynamics`).
    That makes them out-of-sample for every visit at no extra cost, and the mean over the run
    keeps the early epochs, when the network has learnt the clean patterns but not yet
    memorised wrong labels. It is not K-fold cross-validation, which would cost K trainings.

    ``suspicion = 1 - mean p(given label)``; ``suggested = argmax mean p``.
    """

    name = "ce"

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.dynamics = Dynamics(ctx.num_samples, ctx.num_classes, ctx.labels)

    def training_step(self, batch: Batch) -> Any:
        logits = self.context.model(batch.x)
        self.dynamics.update(batch.index, logits, self.context.progress() >= Dynamics.LATE_FROM)
        return F.cross_entropy(logits, batch.y)

    def evidence(self) -> Evidence:
        belief = self.dynamics.mean()
        suspicion = belief_suspicion(belief, self.context.labels)
        return Evidence(suspicion, belief.numpy(), self.dynamics.columns())

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "dynamics": self.dynamics.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.dynamics.load_state_dict(state["dynamics"])
