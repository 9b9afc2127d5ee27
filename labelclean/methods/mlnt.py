"""``mlnt``: Meta-Learning based Noise-Tolerant training (Li, Wong, Zhao and Kankanhalli).

Paper: "Learning to Learn from Noisy Labeled Data" (CVPR 2019). Code: LiJunnan1992/MLNT.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad, vmap

from labelclean.knn import FaissKnn
from labelclean.methods.base import METHODS, Batch, Dynamics, Evidence, TrainContext, belief_suspicion
from labelclean.methods.functional import functional_forward
from labelclean.methods.meta import MetaMethod, MetaOptions, Shared
from labelclean.methods.options import check
from labelclean.methods.state import add_chunked, table_dtype
from labelclean.models import Backbone


def kl_mean_elements(target: Tensor, logits: Tensor) -> Tensor:
    """``KLDivLoss(reduction='mean')`` of the code: ``Σ p (log p − log q) / (B·C)``."""
    log_q = F.log_softmax(logits, -1)
    return (target * (torch.log(target.clamp_min(1e-12)) - log_q)).mean()


def synthetic_labels(
    labels: Tensor, rows: Tensor, neighbours: Tensor, m: int, rho: float, generator: torch.Generator
) -> Tensor:
    """``(M, B)`` label sets: in each, ⌊ρB⌋ random samples take the noisy label of one of their
    nearest neighbours (chosen uniformly), the others keep their own label."""
    b = len(rows)
    out = labels[rows].cpu().repeat(m, 1)
    count = int(rho * b)
    if count == 0 or neighbours.shape[1] == 0:
        return out
    pos = torch.rand(m, b, generator=generator).argsort(1)[:, :count]  # (M, count)
    cols = torch.randint(0, neighbours.shape[1], (m, count), generator=generator)
    picked = neighbours[rows[pos], cols]  # (M, count) dataset rows of the neighbours
    out.scatter_(1, pos, labels.cpu()[picked])
    return out


def head_fast_logits(weight: Tensor, bias: Tensor, h: Tensor, label_sets: Tensor, lr: float) -> Tensor:
    """``(M, B, C)`` logits after one SGD step of the head on each label set (vmap over M)."""

    def one(y: Tensor, w: Tensor, b: Tensor) -> Tensor:
        g = grad(lambda p: F.cross_entropy(F.linear(h, p[0], p[1]), y))((w, b))
        return F.linear(h, w - lr * g[0], b - lr * g[1])

    return vmap(one, in_dims=(0, None, None))(label_sets, weight, bias)


@dataclass(frozen=True)
class MLNTOptions(MetaOptions):
    """``iterations`` of mentor/teacher training after pre-training (``warmup``); ``M`` label
    sets of ``rho`` synthetic flips to one of ``k`` neighbours; ``meta_lr`` of the fast step;
    ``alpha`` consistency weight; ``tau`` mentor filter; ``mentor_mix`` of the target; EMA
    decays ``ema`` then ``ema_late``."""

    warmup: float = 0.3
    iterations: int = 2
    M: int = 10
    rho: float = 0.5
    k: int = 10
    meta_lr: float = 0.2
    alpha: float = 1.0
    tau: float = 0.1
    mentor_mix: float = 0.5
    ema: float = 0.99
    ema_late: float = 0.999

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.iterations >= 1 and self.M >= 1 and self.k >= 1,
              "iterations, M and k: expected >= 1")
        check(0 <= self.rho <= 1, f"rho: expected [0, 1], found {self.rho}")
        check(0 <= self.mentor_mix <= 1, f"mentor_mix: expected [0, 1], found {self.mentor_mix}")
        check(0 < self.ema < 1 and 0 < self.ema_late < 1, "ema, ema_late: expected (0, 1)")


#: Rows per chunk when the mentor's head scores the cached features.
_HEAD_CHUNK = 4096
#: The ramp-up shape of the consistency weight, ``exp(-RAMP (1-u)^2)`` (the code's 5).
RAMP = 5.0


@METHODS.register("mlnt")
class MLNT(MetaMethod):
    """Noise-tolerant training: the model is pushed to stay consistent with an EMA teacher
    after one SGD step on each of M synthetic noisy label sets.

    Per step after a CE pre-training phase (``warmup``): ``L_c = CE(z, ỹ)``; M=10 label sets,
    each replacing the labels of ⌊ρB⌋ samples (ρ=0.5) by the noisy label of a random one of
    their k=10 nearest neighbours; a fast step ``θ_m = θ − η_f ∇ CE(z, ỹᵐ)`` (η_f=``meta_lr``);
    ``J_m = KL(p_T ‖ f(x; θ_m))`` with the code's ``mean`` reduction; the loss
    ``L_c + (w/M) Σ J_m`` takes one optimizer step (as the code merges the paper's two updates).
    ``w`` ramps as ``α·exp(−5(1−u)²)`` over the first half of each iteration, then α; the EMA
    teacher decays at 0.99, then 0.999. ``head`` scope takes fast steps on the linear head over
    detached features, batched over M with ``torch.func.vmap``; ``full`` scope loops over M with
    ``functional_call`` on BatchNorm buffer copies (vmap cannot carry their updates).

    Neighbours come from a FAISS index over the mentor's features of the **whole dataset**,
    not the mini-batch as in the code: with batches of ~128 and 10 classes a batch holds too
    few neighbours of each sample to be meaningful, and the frozen mentor makes precomputing
    them cheap. Iterative training as the paper describes (the code has none): the epochs
    after pre-training are split into ``iterations``; each new iteration takes as mentor the
    better of student and teacher on the trusted set (the teacher when there is none),
    re-indexes neighbours on its features, drops from ``L_c`` samples whose mentor
    probability of the given label is at most ``tau``, and mixes the consistency target
    ``mentor_mix·p_mentor + (1 − mentor_mix)·p_T``. Deviation: the student continues rather
    than restarting from the pre-trained weights. Scores: the mean of the teacher's and the
    mentor's probabilities on un-augmented images and the student's mean training-time
    prediction; suspicion ``1 − mean p(ỹ)``.
    """

    name = "mlnt"
    needs_trusted = False
    auto_member = True
    shared_needs = frozenset({"teacher_target"})
    Options = MLNTOptions
    options: MLNTOptions

    def setup(self, ctx: TrainContext, dynamics: Dynamics | None = None) -> None:
        super().setup(ctx, dynamics)
        if self.reference_source == "pending":
            self.reference_source = "none"  # MLNT needs no reference set
        self.teacher = copy.deepcopy(ctx.model)
        self.mentor = copy.deepcopy(ctx.model)
        for net in (self.teacher, self.mentor):
            net.requires_grad_(False)
        n = ctx.num_samples
        self.neighbours = torch.zeros(n, 0, dtype=torch.long)
        self.mentor_probs = torch.full((n, ctx.num_classes), 1.0 / ctx.num_classes,
                                       dtype=table_dtype(n, ctx.num_classes))
        self.iteration = -1
        self.knn_seconds = 0.0
        meta_epochs = max(1, ctx.epochs - self.warmup_epochs)
        iterations = max(1, min(int(self.options.iterations), meta_epochs))
        self.iteration_length = math.ceil(meta_epochs / iterations)
        self.iteration_start_step = 0

    def _iteration_of(self, epoch: int) -> int:
        return (epoch - self.warmup_epochs) // self.iteration_length

    def on_epoch_start(self, epoch: int) -> None:
        if epoch < self.warmup_epochs:
            return
        it = self._iteration_of(epoch)
        if it != self.iteration and (epoch - self.warmup_epochs) % self.iteration_length == 0:
            self._start_iteration(it)

    def _start_iteration(self, it: int) -> None:
        ctx = self.context
        student = ctx.model
        if it == 0:
            mentor = student  # the CE pre-trained network
            self.teacher.load_state_dict(student.state_dict())
        else:
            mentor = self._better(student, self.teacher)
        self.mentor.load_state_dict(mentor.state_dict())
        features = self._predict(self.mentor, lambda net, x: net.features(x))  # one pass for both
        # Fixed features (``--features``: the identity) give the same neighbours every iteration.
        fixed = not any(True for _ in self.mentor.features.parameters())
        if not (fixed and self.neighbours.shape[1] > 0):
            started = time.perf_counter()
            self.neighbours = torch.from_numpy(
                FaissKnn(seed=ctx.config.seed).fit(features.numpy()).kneighbors(int(self.options.k)))
            self.knn_seconds += time.perf_counter() - started
        with torch.no_grad():
            head = self.mentor.head
            for i in range(0, len(features), _HEAD_CHUNK):  # in place: no second (N, C) copy
                chunk = head(features[i:i + _HEAD_CHUNK].to(head.weight.device)).softmax(1)
                self.mentor_probs[i:i + len(chunk)] = chunk.to("cpu", self.mentor_probs.dtype)
        self.iteration = it
        self.iteration_start_step = ctx.step

    def _predict(self, net: Backbone, fn: Any, rows: Tensor | None = None) -> Tensor:
        ctx = self.context
        net.eval()
        try:
            return ctx.forward_all(lambda x, _: fn(net, x), rows)
        finally:
            net.train()

    def _better(self, student: Backbone, teacher: Backbone) -> Backbone:
        """Student or teacher, whichever is more accurate on the trusted set (teacher if none)."""
        if self.reference_source != "trusted" or len(self.reference) == 0:
            return teacher
        rows = self.reference
        y = self.context.labels.cpu()[rows]
        accs = []
        for net in (student, teacher):
            p = self._predict(net, lambda m, x: m(x), rows)
            accs.append((p.argmax(1) == y).float().mean().item())
        return student if accs[0] > accs[1] else teacher

    def ready(self) -> bool:
        return not self.in_warmup and self.iteration >= 0

    def view_teacher(self) -> torch.nn.Module | None:
        return self.teacher if self.iteration >= 0 else None

    def adopt_reference(self, rows: Tensor, source: str) -> None:
        if source == "trusted":  # MLNT only uses verified rows (to pick its mentor)
            super().adopt_reference(rows, source)

    def training_rows(self) -> Tensor | None:
        return None  # the trusted rows train too: MLNT's meta loss needs no held-out set

    def _schedule(self) -> tuple[float, float]:
        """Consistency weight and EMA decay for the current step of the iteration."""
        ctx = self.context
        steps = self.iteration_length * ctx.steps_per_epoch
        u = (ctx.step - self.iteration_start_step) / max(1, steps // 2)
        alpha = float(self.options.alpha)
        if u >= 1:
            return alpha, float(self.options.ema_late)
        return alpha * math.exp(-RAMP * (1 - u) ** 2), float(self.options.ema)

    def training_step(self, batch: Batch) -> Tensor:
        h, z = self.forward(batch)
        if self.in_warmup or self.iteration < 0:
            return F.cross_entropy(z, batch.y)
        return self.step_loss(batch, h, z, Shared())

    def step_loss(self, batch: Batch, h: Tensor, z: Tensor, shared: Shared) -> Tensor:
        ctx = self.context
        rows = batch.index.cpu()
        per_sample = F.cross_entropy(z, batch.y, reduction="none")
        if self.iteration > 0:
            keep = self.mentor_probs[rows, batch.y.cpu()] > float(self.options.tau)
            keep |= batch.verified.cpu()
            per_sample = per_sample * keep.to(per_sample.device, per_sample.dtype)
        loss_c = per_sample.mean()
        p_teacher = shared.p_teacher
        if p_teacher is None:
            with torch.no_grad():
                p_teacher = self.teacher(batch.x).softmax(1)
        target = p_teacher
        if self.iteration > 0:
            mix = float(self.options.mentor_mix)
            target = mix * self.mentor_probs[rows].to(z.device, z.dtype) + (1 - mix) * p_teacher
        label_sets = synthetic_labels(ctx.labels.cpu(), rows, self.neighbours, int(self.options.M),
                                      float(self.options.rho), ctx.generator).to(z.device)
        lr = float(self.options.meta_lr)
        if self.scope == "head":
            head = ctx.model.head
            fast = head_fast_logits(head.weight, head.bias, h.detach(), label_sets, lr)
            meta = torch.stack([kl_mean_elements(target, fast[m]) for m in range(len(fast))]).mean()
        else:
            params = dict(ctx.model.named_parameters())
            terms = []
            for ym in label_sets:
                g = torch.autograd.grad(F.cross_entropy(z, ym), list(params.values()), create_graph=True)
                fast_params = {k: p - lr * gi for (k, p), gi in zip(params.items(), g)}
                terms.append(kl_mean_elements(target, functional_forward(ctx.model, fast_params, batch.x)))
            meta = torch.stack(terms).mean()
        weight, _ = self._schedule()
        return loss_c + weight * meta

    @torch.no_grad()
    def after_step(self, batch: Batch) -> None:
        if self.in_warmup or self.iteration < 0:
            return
        _, d = self._schedule()  # ctx.step has not advanced since training_step
        for tp, sp in zip(self.teacher.parameters(), self.context.model.parameters()):
            tp.mul_(d).add_(sp.detach(), alpha=1 - d)
        for tb, sb in zip(self.teacher.buffers(), self.context.model.buffers()):
            tb.copy_(sb)

    def evidence(self) -> Evidence:
        ctx = self.context
        labels = ctx.labels.cpu()
        belief = self._predict(self.teacher, lambda net, x: net(x).softmax(1)).float()
        columns = {  # the teacher's and mentor's p(label), then the belief built in place
            "mlnt_teacher_p_given": belief.gather(1, labels.view(-1, 1)).squeeze(1).double().numpy(),
            "mlnt_mentor_p_given": self.mentor_probs.gather(1, labels.view(-1, 1)).squeeze(1).double().numpy(),
        }
        add_chunked(belief, self.mentor_probs)
        belief = self.dynamics.all.add_mean_to(belief).div_(3.0)  # (teacher + mentor + dynamics) / 3
        suspicion = belief_suspicion(belief, labels)
        columns = {"mlnt_suspicion": suspicion, **columns}
        summary = {**self.base_summary(), "iterations_run": self.iteration + 1,
                   "knn_seconds": round(self.knn_seconds, 3)}
        return Evidence(suspicion, belief.numpy(), columns, summary=summary)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "teacher": self.teacher.state_dict(),
                "mentor": self.mentor.state_dict(), "neighbours": self.neighbours.clone(),
                "mentor_probs": self.mentor_probs.clone(), "iteration": self.iteration,
                "iteration_start_step": self.iteration_start_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.teacher.load_state_dict(state["teacher"])
        self.mentor.load_state_dict(state["mentor"])
        self.neighbours = state["neighbours"]
        self.mentor_probs = state["mentor_probs"]
        self.iteration = int(state["iteration"])
        self.iteration_start_step = int(state["iteration_start_step"])
