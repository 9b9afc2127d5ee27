"""Pure tensor math for the meta-learning methods: virtual steps and meta-gradients.

Notation follows docs/methods.md: a virtual SGD step ``θ̂ = θ − α (∇θ L_train(θ, φ) + s)``
(``s`` a constant shift such as a momentum term), and a meta loss ``L_meta(θ̂)`` on trusted
data. For the meta-parameters ``φ`` (MLC's T, MSLG's label logits, IEG's ω and λ) the exact
meta-gradient of one step is

    dL_meta/dφ = −α · ∂/∂φ ⟨∇θ L_train(θ, φ), g⟩,   g = ∇L_meta(θ̂) held constant,

which needs only mixed second derivatives (one double-backward), never a full Hessian and
never a graph through the meta forward. If ``∇θ L_train`` were detached this would be zero
(docs/methods.md, "Notation"), so the inner gradient is always taken with ``create_graph=True``.

For a linear head ``z = W h + b`` with ``(G, g_b) = ∇_{W,b} L_meta(θ̂)`` and
``a_i = G h_i + g_b`` the closed forms of docs/methods.md (MSLG, IEG) follow; they are tested
against :func:`meta_gradient` and finite differences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]


def meta_gradient(
    train_loss: Callable[[], Tensor],
    theta: Params,
    meta_loss: Callable[[Params], Tensor],
    phi: Sequence[Tensor],
    lr: float,
    shift: Params | None = None,
) -> tuple[list[Tensor], Tensor, Params]:
    """Exact ``dL_meta(θ̂)/dφ`` for one virtual SGD step.

    ``train_loss()`` must depend on the tensors in ``theta`` (which require grad) and on
    ``phi``. Returns ``(grads for phi, meta loss value, θ̂ detached)``.
    """
    names = list(theta)
    inner = torch.autograd.grad(train_loss(), [theta[k] for k in names], create_graph=True)
    fast = {
        k: (theta[k] - lr * (g + (shift[k] if shift is not None else 0))).detach().requires_grad_(True)
        for k, g in zip(names, inner)
    }
    value = meta_loss(fast)
    outer = torch.autograd.grad(value, [fast[k] for k in names])
    dot = torch.stack([(g * o).sum() for g, o in zip(inner, outer)]).sum()
    grads = torch.autograd.grad(-lr * dot, list(phi), allow_unused=True)
    out = [torch.zeros_like(p) if g is None else g for p, g in zip(phi, grads)]
    return out, value.detach(), {k: v.detach() for k, v in fast.items()}


def head_params(model: nn.Module) -> Params:
    """Detached leaf copies of the linear head (``weight``, ``bias``) that require grad."""
    head = model.get_submodule("head")
    assert isinstance(head, nn.Linear)
    return {"weight": head.weight.detach().clone().requires_grad_(True),
            "bias": head.bias.detach().clone().requires_grad_(True)}


def linear(params: Params, h: Tensor) -> Tensor:
    return F.linear(h, params["weight"], params["bias"])


def buffer_copies(model: nn.Module) -> Params:
    """Copies of every buffer (BatchNorm running statistics), for virtual forwards."""
    return {k: v.clone() for k, v in model.named_buffers()}


def functional_forward(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    """``model(x)`` with ``params``; BatchNorm updates copies, never the real running stats."""
    return functional_call(model, (params, buffer_copies(model)), (x,), strict=False)


def head_sensitivity(meta_head_grad: Params, h: Tensor) -> Tensor:
    """``a_i = G h_i + g_b``: ``(B, C)``, how the meta loss moves with each sample's logits."""
    return F.linear(h, meta_head_grad["weight"], meta_head_grad["bias"])


def head_meta_sensitivity(
    theta: Params,
    inner_loss: Tensor,
    lr: float,
    h: Tensor,
    h_ref: Tensor,
    y_ref: Tensor,
    shift: Params | None = None,
) -> Tensor:
    """The head-scope virtual step every closed form starts from.

    One SGD step of the head copies ``theta`` on ``inner_loss`` (plus ``shift``, e.g. IEG's
    momentum and weight decay), the meta CE of the moved head on the reference features
    ``h_ref``, and its sensitivity ``a_i = G h_i + g_b`` for the batch features ``h``
    (:func:`head_sensitivity`), ``(B, C)``.
    """
    names = list(theta)
    inner = torch.autograd.grad(inner_loss, [theta[k] for k in names])
    fast = {
        k: (theta[k] - lr * (g + (shift[k] if shift is not None else 0))).detach().requires_grad_(True)
        for k, g in zip(names, inner)
    }
    meta = F.cross_entropy(linear(fast, h_ref), y_ref)
    grads = dict(zip(names, torch.autograd.grad(meta, [fast[k] for k in names])))
    return head_sensitivity(grads, h)


def mslg_head_label_grad(f: Tensor, a: Tensor, alpha: float) -> Tensor:
    """MSLG closed form: ``dL_meta/dyᵈ_ik = α/(BC) · f_ik (a_ik − Σ_j f_ij a_ij)``.

    For ``L_train = KL(f‖softmax(yᵈ))`` averaged over the ``B·C`` elements. Rows sum to 0.
    """
    b, c = f.shape
    return alpha / (b * c) * f * (a - (f * a).sum(1, keepdim=True))


def ieg_head_grads(
    f: Tensor, targets: Tensor, given: Tensor, pseudo: Tensor, omega: Tensor, a: Tensor, eta: float
) -> tuple[Tensor, Tensor]:
    """IEG closed forms for ``L_la = Σ ω_i CE(t_i, f_i)`` with ``t_i = λ_i e_ỹ + (1−λ_i) g_i``.

    ``dL_meta/dω_i = −η (f_i − t_i)ᵀ a_i`` and ``dL_meta/dλ_i = η ω_i (e_ỹ − g_i)ᵀ a_i``.
    ``given`` is the one-hot noisy label ``(B, C)``.
    """
    d_omega = -eta * ((f - targets) * a).sum(1)
    d_lambda = eta * omega * ((given - pseudo) * a).sum(1)
    return d_omega, d_lambda


def logit_norm(z: Tensor) -> Tensor:
    """IEG's logit normalisation: one scalar ``sqrt(mean(z²))`` over the whole batch."""
    return z / torch.sqrt((z * z).mean() + 1e-8)


def sharpen(p: Tensor, temperature: float) -> Tensor:
    q = p ** (1.0 / temperature)
    return q / q.sum(1, keepdim=True)

