"""``ieg``: IEG, Isolation-Escalation-Guidance (Zhang, Zhang, Arik, Lee and Pfister).

Paper: "Distilling Effective Supervision from Severe Label Noise" (CVPR 2020). Code:
google-research/google-research, folder ieg/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from labelclean.methods.base import (
    METHODS,
    Batch,
    Dynamics,
    Evidence,
    TrainContext,
    belief_suspicion,
    per_sample_soft_ce,
    soft_cross_entropy,
)
from labelclean.methods.functional import (
    head_meta_sensitivity,
    ieg_head_grads,
    linear,
    logit_norm,
    meta_gradient,
    sharpen,
)
from labelclean.methods.meta import MetaMethod, MetaOptions, Shared
from labelclean.methods.options import check
from labelclean.methods.state import RowMeans


@dataclass(frozen=True)
class IEGOptions(MetaOptions):
    """The code's defaults: ``eta`` lookahead step, ``meta_momentum``, ``lambda_init``,
    ``temperature`` of sharpening; ``mixup``/``consistency`` switches with their factors."""

    warmup: float = 0.1
    eta: float = 0.1
    meta_momentum: float = 0.9
    lambda_init: float = 0.9
    temperature: float = 0.5
    mixup: bool = False
    consistency: bool = False
    ce_factor: float = 5.0
    consistency_factor: float = 20.0
    mixup_beta: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.lambda_init <= 1, f"lambda_init: expected [0, 1], found {self.lambda_init}")
        check(self.temperature > 0, f"temperature: expected > 0, found {self.temperature}")
        check(self.eta > 0, f"eta: expected > 0, found {self.eta}")


#: A sample whose normalised weight times the batch size is below this is "isolated" (ω≈0).
ISOLATED_WEIGHT = 1e-3
#: Share of the given label kept in the weighted term's target (the code's 0.9 e + 0.1 g).
WEIGHTED_TARGET_GIVEN = 0.9


@METHODS.register("ieg")
class IEG(MetaMethod):
    """Meta re-weighting (ω) and meta re-labelling (λ) from one lookahead step.

    Per step after warm-up: pseudo labels ``g`` from two augmented views (batch-level
    logit_norm, softmax, mean over views, sharpened at T=0.5, always detached); a lookahead
    step ``θ̂ = θ − η (μ m + ∇ Σ ω_i CE(t_i, f_i) + wd θ)`` from ω=1/B, λ=0.9 with
    ``t_i = λ_i e_ỹ + (1−λ_i) g_i``, η=0.1 and the optimizer's momentum buffer ``m`` (μ=0.9,
    zeros when empty), as the code does; ``ω ∝ max(−∂L_meta/∂ω, 0)``, ``λ_i = [∂L_meta/∂λ_i < 0]``;
    then the real step on ``½ mean CE(λe + (1−λ)g, z) + ½ Σ ω CE(0.9e + 0.1g, z)``.
    ``head`` scope uses the closed forms of docs/methods.md; ``full`` the exact second-order
    gradients. MixUp with the trusted batch (``mixup``, p=5) and KL consistency between views
    (``consistency``, k=20) are switches, off by default: on a CPU they cost ~3x and ~1.3x,
    and the code's own default of p>0 only exists to compute g, which is done separately here.

    Deviations: a short CE warm-up (``warmup``, the code has none) so the first pseudo labels
    are not noise; trusted rows in a batch keep λ=1. Evidence, accumulated per sample id over
    visits: the fraction of visits relabelled (λ=0), the fraction isolated (ω=0), and the mean
    pseudo label. Suspicion is the mean of those two fractions and ``1 − ḡ[ỹ]``; suggestion
    ``argmax ḡ``.
    """

    name = "ieg"
    num_views = 2
    auto_member = True
    shared_needs = frozenset({"reference", "second_view"})
    Options = IEGOptions
    options: IEGOptions

    def setup(self, ctx: TrainContext, dynamics: Dynamics | None = None) -> None:
        super().setup(ctx, dynamics)
        n, c = ctx.num_samples, ctx.num_classes
        self.visits = torch.zeros(n, dtype=torch.float64)
        self.relabelled = torch.zeros(n, dtype=torch.float64)
        self.isolated = torch.zeros(n, dtype=torch.float64)
        self.weight_sum = torch.zeros(n, dtype=torch.float64)
        self.pseudo = RowMeans(n, c)

    def pseudo_labels(self, z: Tensor, z2: Tensor) -> Tensor:
        p = 0.5 * (logit_norm(z.detach()).softmax(1) + logit_norm(z2.detach()).softmax(1))
        return sharpen(p, float(self.options.temperature))

    def _shift(self, theta: dict[str, Tensor], live: dict[str, Tensor]) -> dict[str, Tensor]:
        """``μ m + wd θ`` for each parameter of the virtual step (momentum from the optimizer)."""
        opt = self.context.optimizer
        assert opt is not None
        mu = float(self.options.meta_momentum)
        wd = float(opt.param_groups[0]["weight_decay"])
        out = {}
        for k, p in live.items():
            buf = opt.state.get(p, {}).get("momentum_buffer")
            m = buf.detach() if buf is not None else torch.zeros_like(p)
            out[k] = mu * m + wd * theta[k].detach()
        return out

    def meta_grads(
        self, h: Tensor, z: Tensor, onehot: Tensor, g: Tensor, shared: Shared
    ) -> tuple[Tensor, Tensor]:
        x_ref, y_ref = shared.x_ref, shared.y_ref
        b = len(onehot)
        eta = float(self.options.eta)
        lam0 = float(self.options.lambda_init)
        model = self.context.model
        if self.scope == "head":
            theta = self.theta()
            live = {"weight": model.head.weight, "bias": model.head.bias}
            hd = h.detach()
            t = lam0 * onehot + (1 - lam0) * g
            zt = linear(theta, hd)
            omega = torch.full((b,), 1.0 / b, device=z.device)
            assert shared.h_ref is not None and y_ref is not None
            a = head_meta_sensitivity(theta, (omega * per_sample_soft_ce(zt, t)).sum(), eta, hd,
                                      shared.h_ref, y_ref, shift=self._shift(theta, live))
            return ieg_head_grads(zt.detach().softmax(1), t, onehot, g, omega, a, eta)
        theta = dict(model.named_parameters())
        omega = torch.full((b,), 1.0 / b, device=z.device, requires_grad=True)
        lam = torch.full((b,), lam0, device=z.device, requires_grad=True)

        def lookahead() -> Tensor:
            t = lam[:, None] * onehot + (1 - lam[:, None]) * g
            return (omega * per_sample_soft_ce(z, t)).sum()

        (d_omega, d_lambda), _, _ = meta_gradient(
            lookahead, theta, self.meta_ce(x_ref, None, y_ref), [omega, lam], eta,
            shift=self._shift(theta, theta),
        )
        return d_omega, d_lambda

    def second_view(self, batch: Batch) -> Tensor:
        """Logits of the second view; with gradient only when consistency training needs it."""
        assert batch.x2 is not None
        if self.options.consistency:
            return self.context.model(batch.x2)
        with torch.no_grad():
            return self.context.model(batch.x2)

    def training_step(self, batch: Batch) -> Tensor:
        h, z = self.forward(batch)
        z2 = self.second_view(batch)
        if self.plain_step:
            self.record_pseudo(batch, z, z2)
            return F.cross_entropy(z, batch.y)
        shared = self.shared_inputs(batch)
        shared.z2 = z2
        return self.step_loss(batch, h, z, shared)

    def observe_warmup(self, batch: Batch, z: Tensor, z2: Tensor) -> None:
        self.record_pseudo(batch, z, z2)

    def second_view_needs_grad(self) -> bool:
        return self.options.consistency

    def record_pseudo(self, batch: Batch, z: Tensor, z2: Tensor) -> Tensor:
        g = self.pseudo_labels(z, z2)
        rows = batch.index.cpu()
        self.pseudo.add(rows, g)
        return g

    def step_loss(self, batch: Batch, h: Tensor, z: Tensor, shared: Shared) -> Tensor:
        assert shared.z2 is not None
        z2 = shared.z2
        consistency = bool(self.options.consistency)
        rows = batch.index.cpu()
        g = self.record_pseudo(batch, z, z2)
        onehot = F.one_hot(batch.y, z.shape[1]).to(z.dtype)
        x_ref, y_ref = shared.x_ref, shared.y_ref
        d_omega, d_lambda = self.meta_grads(h, z, onehot, g, shared)
        raw = (-d_omega).detach()
        weights = raw.clamp_min(0)
        weights = weights / (weights.sum() + 1e-5)
        lam = (d_lambda < 0).to(z.dtype)
        lam = torch.where(batch.verified, torch.ones_like(lam), lam)
        b = len(rows)
        self.visits.index_add_(0, rows, torch.ones(b, dtype=torch.float64))
        self.relabelled.index_add_(0, rows, (1 - lam).double().cpu())
        self.isolated.index_add_(0, rows, (weights * b < ISOLATED_WEIGHT).double().cpu())
        self.weight_sum.index_add_(0, rows, (raw * b).double().cpu())

        target = lam[:, None] * onehot + (1 - lam[:, None]) * g
        loss = 0.5 * per_sample_soft_ce(z, target).mean()
        loss = loss + 0.5 * (weights * per_sample_soft_ce(z, WEIGHTED_TARGET_GIVEN * onehot + (1 - WEIGHTED_TARGET_GIVEN) * g)).sum()
        if self.options.mixup:
            assert x_ref is not None and y_ref is not None
            loss = loss + self.mixup_loss(batch, g, x_ref, y_ref)
        if consistency:
            q = z.detach().softmax(1)
            loss = loss + float(self.options.consistency_factor) * F.kl_div(
                F.log_softmax(z2, 1), q, reduction="batchmean")
        return loss

    def mixup_loss(self, batch: Batch, g: Tensor, x_ref: Tensor, y_ref: Tensor) -> Tensor:
        """MixUp of [probe; x; x̃] with labels [onehot(y_p); g; g] (mode ``xxy.yxy``)."""
        assert batch.x2 is not None
        ctx = self.context
        c = g.shape[1]
        x_pool = torch.cat([x_ref, batch.x, batch.x2])
        y_pool = torch.cat([F.one_hot(y_ref, c).to(g.dtype), g, g])
        n = len(x_pool)
        perm = torch.randperm(n, generator=ctx.generator).to(x_pool.device)
        u = torch.rand(n, generator=ctx.generator).to(x_pool.device)
        m = u ** (1.0 / float(self.options.mixup_beta)) / 2
        m = torch.maximum(m, 1 - m)
        x_mix = m[:, None, None, None] * x_pool + (1 - m[:, None, None, None]) * x_pool[perm]
        y_mix = m[:, None] * y_pool + (1 - m[:, None]) * y_pool[perm]
        out = ctx.model(x_mix)
        p = len(x_ref)
        probe = soft_cross_entropy(logit_norm(out[:p]), y_mix[:p])
        rest = soft_cross_entropy(logit_norm(out[p:]), y_mix[p:])
        return probe + float(self.options.ce_factor) * rest

    def evidence(self) -> Evidence:
        labels = self.context.labels.cpu()
        visits = self.visits.clamp_min(1)
        relabel_rate = self.relabelled / visits
        isolated_rate = self.isolated / visits
        pseudo = self.pseudo.mean(fill=self.dynamics.all)
        pseudo /= pseudo.sum(1, keepdim=True)
        off_given = belief_suspicion(pseudo, labels)
        suspicion = ((relabel_rate + isolated_rate).numpy() + off_given) / 3.0
        columns = {
            "ieg_suspicion": suspicion,
            "ieg_relabel_rate": relabel_rate.numpy(),
            "ieg_isolated_rate": isolated_rate.numpy(),
            "ieg_weight": (self.weight_sum / visits).numpy(),
        }
        return Evidence(suspicion, pseudo.numpy(), columns, summary=self.base_summary())

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **{k: getattr(self, k).clone() for k in self._tables},
                "pseudo": self.pseudo.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for k in self._tables:
            getattr(self, k).copy_(state[k])
        self.pseudo.load_state_dict(state["pseudo"])

    _tables = ("visits", "relabelled", "isolated", "weight_sum")
