"""The meta-gradient math: finite differences, closed forms, head vs full scope."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelclean.methods.functional import (
    functional_forward,
    head_sensitivity,
    ieg_head_grads,
    linear,
    meta_gradient,
    mslg_head_label_grad,
)
from labelclean.methods.mlc import corrected_nll, normalise_columns, posterior_given_noisy
from labelclean.methods.mslg import kl_mean


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _problem(seed=0, b=6, d=4, c=3):
    g = torch.Generator().manual_seed(seed)
    theta = {"weight": torch.randn(c, d, generator=g).requires_grad_(True),
             "bias": torch.randn(c, generator=g).requires_grad_(True)}
    h = torch.randn(b, d, generator=g)
    y = torch.randint(0, c, (b,), generator=g)
    h_ref = torch.randn(5, d, generator=g)
    y_ref = torch.randint(0, c, (5,), generator=g)
    return theta, h, y, h_ref, y_ref, g


def _unrolled(theta, train_loss_of_phi, phi, h_ref, y_ref, lr):
    """L_meta(θ − lr ∇θ L_train(θ, φ)) computed directly, for finite differences."""
    names = list(theta)
    grads = torch.autograd.grad(train_loss_of_phi(phi), [theta[k] for k in names])
    fast = {k: theta[k] - lr * g for k, g in zip(names, grads)}
    return F.cross_entropy(linear(fast, h_ref), y_ref).item()


def _finite_difference(theta, train_loss_of_phi, phi, h_ref, y_ref, lr, eps=1e-6):
    out = torch.zeros_like(phi)
    for idx in range(phi.numel()):
        plus, minus = phi.detach().clone(), phi.detach().clone()
        plus.view(-1)[idx] += eps
        minus.view(-1)[idx] -= eps
        out.view(-1)[idx] = (_unrolled(theta, train_loss_of_phi, plus, h_ref, y_ref, lr)
                             - _unrolled(theta, train_loss_of_phi, minus, h_ref, y_ref, lr)) / (2 * eps)
    return out


def _check(train_loss_of_phi, phi0, seed=0, lr=0.3):
    theta, h, y, h_ref, y_ref, _ = _problem(seed)
    phi = phi0.clone().requires_grad_(True)
    (grad,), _, _ = meta_gradient(lambda: train_loss_of_phi(phi, theta, h, y), theta,
                                  lambda fast: F.cross_entropy(linear(fast, h_ref), y_ref), [phi], lr)
    fd = _finite_difference(theta, lambda p: train_loss_of_phi(p, theta, h, y), phi0, h_ref, y_ref, lr)
    assert torch.isfinite(grad).all() and grad.abs().max() > 1e-8
    assert torch.allclose(grad, fd, atol=1e-7, rtol=1e-5)
    return grad


def test_mlc_transition_meta_gradient_matches_finite_differences():
    def loss(s, theta, h, y):
        return corrected_nll(linear(theta, h), s.softmax(1), y)

    _check(loss, torch.eye(3) * 2.0)


def test_mslg_label_meta_gradient_matches_finite_differences_and_closed_form():
    def loss(yd, theta, h, y):
        return kl_mean(linear(theta, h), yd.softmax(1))

    yd0 = 3.0 * F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).double() + 0.1
    grad = _check(loss, yd0)
    assert torch.allclose(grad.sum(1), torch.zeros(6), atol=1e-12)  # rows sum to 0
    # Closed form: α/(BC) · f (a − <f, a>) with a from the meta gradient at θ̂.
    theta, h, y, h_ref, y_ref, _ = _problem(0)
    lr = 0.3
    inner = torch.autograd.grad(loss(yd0, theta, h, y), list(theta.values()))
    fast = {k: (v - lr * g).detach().requires_grad_(True) for (k, v), g in zip(theta.items(), inner)}
    meta = dict(zip(fast, torch.autograd.grad(F.cross_entropy(linear(fast, h_ref), y_ref), list(fast.values()))))
    closed = mslg_head_label_grad(linear(theta, h).softmax(1).detach(), head_sensitivity(meta, h), lr)
    assert torch.allclose(closed, grad, atol=1e-10)


def test_ieg_weight_and_relabel_closed_forms_match_autograd():
    theta, h, y, h_ref, y_ref, g = _problem(1)
    b, c = len(y), 3
    pseudo = torch.softmax(torch.randn(b, c, generator=g), 1)
    onehot = F.one_hot(y, c).double()
    omega = torch.full((b,), 1.0 / b, requires_grad=True)
    lam = torch.full((b,), 0.9, requires_grad=True)
    eta = 0.1

    def train_loss():
        t = lam[:, None] * onehot + (1 - lam[:, None]) * pseudo
        return (omega * -(t * F.log_softmax(linear(theta, h), 1)).sum(1)).sum()

    (d_omega, d_lambda), _, fast = meta_gradient(
        train_loss, theta, lambda f: F.cross_entropy(linear(f, h_ref), y_ref), [omega, lam], eta)
    fast = {k: v.requires_grad_(True) for k, v in fast.items()}
    meta = dict(zip(fast, torch.autograd.grad(F.cross_entropy(linear(fast, h_ref), y_ref), list(fast.values()))))
    a = head_sensitivity(meta, h)
    t = 0.9 * onehot + 0.1 * pseudo
    c_omega, c_lambda = ieg_head_grads(linear(theta, h).softmax(1).detach(), t, onehot, pseudo,
                                       omega.detach(), a, eta)
    assert torch.allclose(c_omega, d_omega, atol=1e-12)
    assert torch.allclose(c_lambda, d_lambda, atol=1e-12)
    assert d_omega.abs().max() > 1e-6 and d_lambda.abs().max() > 1e-8


def test_detached_inner_gradient_gives_no_meta_gradient():
    """docs/methods.md, "Notation": the meta-parameters reach the meta loss only through ∇θ L_train."""
    theta, h, y, h_ref, y_ref, _ = _problem(2)
    s = (torch.eye(3) * 2).requires_grad_(True)
    inner = torch.autograd.grad(corrected_nll(linear(theta, h), s.softmax(1), y), list(theta.values()))
    fast = {k: v - 0.3 * g.detach() for (k, v), g in zip(theta.items(), inner)}
    meta = F.cross_entropy(linear(fast, h_ref), y_ref)
    (grad,) = torch.autograd.grad(meta, [s], allow_unused=True)
    assert grad is None


class _HeadOnly(nn.Module):
    """A model that is only a linear head: head and full scope must agree exactly."""

    def __init__(self, d, c):
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(d, c)

    def forward(self, x):
        return self.head(self.features(x))


def test_head_and_full_scope_agree_on_a_linear_model():
    theta, h, y, h_ref, y_ref, _ = _problem(3)
    model = _HeadOnly(4, 3)
    with torch.no_grad():
        model.head.weight.copy_(theta["weight"])
        model.head.bias.copy_(theta["bias"])
    yd0 = 2.0 * F.one_hot(y, 3).double()

    yd = yd0.clone().requires_grad_(True)
    (head,), _, _ = meta_gradient(lambda: kl_mean(linear(theta, h), yd.softmax(1)), theta,
                                  lambda f: F.cross_entropy(linear(f, h_ref), y_ref), [yd], 0.5)
    full_theta = dict(model.named_parameters())
    z = model(h)
    yd2 = yd0.clone().requires_grad_(True)
    (full,), _, _ = meta_gradient(
        lambda: kl_mean(z, yd2.softmax(1)), full_theta,
        lambda f: F.cross_entropy(functional_forward(model, {"head." + k.split(".")[-1]: v for k, v in f.items()}, h_ref), y_ref),
        [yd2], 0.5)
    assert torch.allclose(head, full, atol=1e-12)


def test_virtual_forward_leaves_batchnorm_statistics_alone():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {k: v * 1.5 for k, v in model.named_parameters()}
    functional_forward(model, params, torch.randn(8, 4))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_transition_helpers_keep_distributions():
    t = normalise_columns(torch.tensor([[0.5, -0.2], [0.5, 0.3]]))
    assert (t >= 0).all() and torch.allclose(t.sum(0), torch.ones(2))
    s = torch.randn(4, 4)
    probs = torch.softmax(torch.randn(5, 4), 1)
    post = posterior_given_noisy(probs, s.softmax(1), torch.tensor([0, 1, 2, 3, 0]))
    assert torch.allclose(post.sum(1), torch.ones(5))


def test_ieg_weight_and_relabel_meta_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(5)
    pseudo = torch.softmax(torch.randn(6, 3, generator=g), 1)

    def by_omega(omega, theta, h, y):
        t = 0.9 * F.one_hot(y, 3).double() + 0.1 * pseudo
        return (omega * -(t * F.log_softmax(linear(theta, h), 1)).sum(1)).sum()

    _check(by_omega, torch.full((6,), 1 / 6), lr=0.1)

    def by_lambda(lam, theta, h, y):
        t = lam[:, None] * F.one_hot(y, 3).double() + (1 - lam[:, None]) * pseudo
        return (-(t * F.log_softmax(linear(theta, h), 1)).sum(1)).sum() / 6

    _check(by_lambda, torch.full((6,), 0.9), lr=0.1)


def test_mlnt_meta_gradient_through_fast_steps_matches_finite_differences():
    from labelclean.methods.mlnt import head_fast_logits, kl_mean_elements

    g = torch.Generator().manual_seed(6)
    w0 = torch.randn(3, 4, generator=g)
    b = torch.randn(3, generator=g)
    h = torch.randn(5, 4, generator=g)
    sets = torch.randint(0, 3, (3, 5), generator=g)
    target = torch.softmax(torch.randn(5, 3, generator=g), 1)

    def loss(w):
        fast = head_fast_logits(w, b, h, sets, 0.5)
        return torch.stack([kl_mean_elements(target, fast[m]) for m in range(len(fast))]).mean()

    w = w0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(w), [w])
    fd = torch.zeros_like(w0)
    for i in range(w0.numel()):
        plus, minus = w0.clone(), w0.clone()
        plus.view(-1)[i] += 1e-6
        minus.view(-1)[i] -= 1e-6
        fd.view(-1)[i] = (loss(plus) - loss(minus)) / 2e-6
    assert torch.allclose(grad, fd, atol=1e-7, rtol=1e-5) and grad.abs().max() > 1e-6
