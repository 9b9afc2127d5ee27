"""``mlc``: Meta Loss Correction (Wang, Hu and Hu, CVPR 2020).

Paper: "Training Noise-Robust Deep Neural Networks via Meta-Learning". Code:
ZhenWang-PhD/Training-Noise-Robust-Deep-Neural-Networks-via-Meta-Learning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from labelclean.methods.base import METHODS, Batch, Dynamics, Evidence, TrainContext, belief_suspicion
from labelclean.methods.functional import meta_gradient
from labelclean.methods.meta import MetaMethod, MetaOptions, Shared
from labelclean.methods.options import check
from labelclean.methods.state import row_chunks


def corrected_nll(logits: Tensor, transition: Tensor, labels: Tensor) -> Tensor:
    """Paper form: ``−log (Tᵀ f_i)_{ỹ_i}`` with ``f = softmax(z)``; ``T`` rows = true class."""
    noisy = logits.softmax(1) @ transition
    return F.nll_loss(torch.log(noisy.clamp_min(1e-12)), labels)


def logit_corrected_ce(logits: Tensor, transition: Tensor, labels: Tensor) -> Tensor:
    """Official-code form: ``CE(z_iᵀ T, ỹ_i)`` (T multiplies the logits)."""
    return F.cross_entropy(logits @ transition, labels)


def posterior_given_noisy(probs: Tensor, transition: Tensor, labels: Tensor, out: Tensor | None = None
                          ) -> Tensor:
    """``π_ik = f_ik T_{k,ỹ_i} / Σ_j f_ij T_{j,ỹ_i}``: ``(N, C)``, the true class given T.

    Computed by row chunks (:func:`~labelclean.methods.state.row_chunks`) into ``out`` (a new
    tensor by default; ``probs`` itself to work in place), so no other ``(N, C)`` temporary
    exists."""
    out = torch.empty_like(probs) if out is None else out
    for part in row_chunks(*probs.shape):
        joint = probs[part] * transition[:, labels[part]].T
        out[part] = joint / joint.sum(1, keepdim=True).clamp_min(1e-12)
    return out


def normalise_columns(t: Tensor) -> Tensor:
    """Clamp at 0 and divide each column by its sum (columns summing to 0 are left as they are)."""
    t = t.clamp_min(0)
    sums = t.sum(0, keepdim=True)
    return torch.where(sums > 0, t / sums.clamp_min(1e-12), t)


@dataclass(frozen=True)
class MLCOptions(MetaOptions):
    """``mode``: ``persistent`` (the paper's global T) or ``reset`` (the official code's per-step
    T). ``meta_lr``: step on S (persistent). ``diag_init``: initial diagonal of T. ``inner_lr``:
    virtual-step learning rate (default: the optimizer's). ``reset_meta_lr``: the code's 0.11."""

    mode: Literal["persistent", "reset"] = "persistent"
    meta_lr: float = 0.002
    diag_init: float = 0.9
    inner_lr: float | None = None
    reset_meta_lr: float = 0.11

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.diag_init < 1, f"diag_init: expected a value in (0, 1), found {self.diag_init}")
        check(self.meta_lr > 0, f"meta_lr: expected > 0, found {self.meta_lr}")
        check(self.inner_lr is None or self.inner_lr > 0, f"inner_lr: expected > 0, found {self.inner_lr}")


#: EMA decay of the reported T in ``reset`` mode (the per-step T is noisy).
RESET_T_EMA = 0.99


@METHODS.register("mlc")
class MLC(MetaMethod):
    """Meta Loss Correction: learns the noise transition matrix T with a meta step.

    Each step after warm-up: a virtual SGD step on the loss corrected by T, a meta step on a
    trusted batch that moves T down the meta-gradient, then the real step with T fixed.

    ``mode="persistent"`` (default, the paper's global T): ``T = row_softmax(S)`` with S
    initialised to a strong diagonal (``diag_init``), corrected loss ``−log (Tᵀ f)_ỹ``, and S
    updated by ``meta_lr`` times the meta-gradient normalised to unit RMS (the softmax
    parametrisation keeps T a row-stochastic matrix, which docs/methods.md explains, over
    clamping a persistent T; the normalisation makes the step size independent of the
    gradient's scale, which shrinks with the learning rate). ``mode="reset"`` follows the
    official code: T reset to I every step, logits multiplied by T, ``T ← max(T − 0.11 ∇, 0)``
    and column normalisation; the reported matrix is then an EMA (0.99) of the per-step T,
    row-normalised. The inner step uses the current learning rate on the mean loss.
    Trusted rows in a batch use plain CE (their labels are clean).

    Scores: the posterior of each class given the noisy label and T,
    ``π_ik ∝ f_ik T_{k,ỹ_i}``, with f the mean training-time prediction of the model trained
    with the corrected loss (an estimate of the clean posterior). ``meta_lr`` is small
    (0.002): on the sample digits larger steps let single rows of a persistent T drift far
    from the truth (0.05 gave a 61% off-diagonal entry where the truth is under 1%), the
    instability docs/methods.md records. In ``reset`` mode the per-step T stays within 1e-5 of I,
    which would make every posterior certain, so that mode scores with f itself.
    """

    name = "mlc"
    auto_member = True
    Options = MLCOptions
    options: MLCOptions

    def setup(self, ctx: TrainContext, dynamics: Dynamics | None = None) -> None:
        super().setup(ctx, dynamics)
        c = ctx.num_classes
        d = float(self.options.diag_init)
        off = (1 - d) / max(1, c - 1)
        self.S = torch.full((c, c), math.log(off), device=ctx.device)
        self.S.fill_diagonal_(math.log(d))
        self.T_ema = torch.eye(c, device=ctx.device)

    def transition(self) -> Tensor:
        if self.options.mode == "persistent":
            return self.S.softmax(1)
        t = self.T_ema / self.T_ema.sum(1, keepdim=True).clamp_min(1e-12)
        return t

    def _loss(self, logits: Tensor, t: Tensor, y: Tensor, verified: Tensor) -> Tensor:
        fn = corrected_nll if self.options.mode == "persistent" else logit_corrected_ce
        noisy = ~verified
        loss = logits.new_zeros(())
        if noisy.any():
            loss = loss + fn(logits[noisy], t, y[noisy]) * noisy.float().mean()
        if verified.any():
            loss = loss + F.cross_entropy(logits[verified], y[verified]) * verified.float().mean()
        return loss

    def step_loss(self, batch: Batch, h: Tensor, z: Tensor, shared: Shared) -> Tensor:
        x_ref, y_ref, h_ref = shared.x_ref, shared.y_ref, shared.h_ref
        theta, logits = self.virtual_inputs(h, z)
        persistent = self.options.mode == "persistent"
        leaf = (self.S if persistent else torch.eye(len(self.S), device=z.device)).clone().requires_grad_(True)
        t_of = (lambda: leaf.softmax(1)) if persistent else (lambda: leaf)
        (grad,), _, _ = meta_gradient(
            lambda: self._loss(logits(), t_of(), batch.y, batch.verified), theta,
            self.meta_ce(x_ref, h_ref, y_ref), [leaf], self.inner_lr(),
        )
        with torch.no_grad():
            if persistent:
                rms = grad.pow(2).mean().sqrt()
                if rms > 0:
                    self.S -= float(self.options.meta_lr) * grad / rms
                t = self.S.softmax(1)
            else:
                t = normalise_columns(leaf.detach() - float(self.options.reset_meta_lr) * grad)
                self.T_ema.mul_(RESET_T_EMA).add_((1 - RESET_T_EMA) * t)
        return self._loss(z, t.detach(), batch.y, batch.verified)

    def evidence(self) -> Evidence:
        ctx = self.context
        t = self.transition().cpu().float()
        probs = self.dynamics.mean()
        if self.options.mode == "persistent":
            belief = posterior_given_noisy(probs, t, ctx.labels.cpu(), out=probs)
        else:
            # The per-step T of the official code is a one-step correction near I, not a
            # global noise model; with T = I the posterior is the model's own prediction.
            belief = probs
        suspicion = belief_suspicion(belief, ctx.labels)
        summary = {**self.base_summary(), "mode": self.options.mode}
        return Evidence(suspicion, belief.numpy(), {"mlc_suspicion": suspicion},
                        transition=t.numpy(), summary=summary)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "S": self.S.clone(), "T_ema": self.T_ema.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.S.copy_(state["S"])
        self.T_ema.copy_(state["T_ema"])

