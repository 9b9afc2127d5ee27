"""A cross-fitted linear head on the final model's features: each row scored by a head that
did not see its label.

The final network has fitted every training label, the wrong ones included, so its own
probability of a row's label is partly memory of that label. A linear head refitted on the
frozen features of the other folds cannot remember the row: its probability of the label says
how well the label fits where the image lies among the other images of that class. This is
cross-fitting (as in cleanlab's out-of-sample probabilities) at the cost of a few logistic
regressions instead of K trainings; the features themselves were still trained on every label.

Each row of the fitting folds is weighted by how little the ranking so far suspects it
(``1 - rank / N``): under a class-level flip (30% of one class given as another) an unweighted
head learns the flip as part of the class boundary and stops seeing it; the weights keep the
rows the ranking already suspects from teaching it. Verified rows weigh 1.

Pure functions of arrays; ``auto`` (``--option rank=final+probe``) calls them after training.
Measured in docs/benchmarks.md ("A cross-fitted head on the final features").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

#: Folds of the cross-fit: each head fits on three quarters of the rows.
FOLDS = 4
#: Features are L2-normalised and multiplied by this before the head (a temperature: cosine
#: similarities in [-1, 1] are too flat for a softmax over classes).
SCALE = 10.0
#: L2 penalty on the head's weights (summed squares) added to the weighted mean cross-entropy.
WEIGHT_DECAY = 1e-3
#: L-BFGS iterations per fold (convex; on 2,400 CIFAR-10 rows 50 gave the ranking of 200 to
#: 0.001 AUROC, in half the time of 100).
ITERATIONS = 50
#: Fewer rows and each fold's head has too little to fit: ``auto`` ranks without the probe.
MIN_ROWS = 2 * FOLDS
#: At most this many rows fit each fold's head, a seeded sample of the other folds: the cost
#: stays bounded at a million rows, and 200,000 rows are plenty for a linear head.
MAX_FIT_ROWS = 200_000
#: Held-out rows scored (and normalised) at a time.
PREDICT_CHUNK = 65_536


def order_ranks(score: np.ndarray) -> np.ndarray:
    """``(N,)`` rank of each score in ``(0, 1]``: 1 for the highest; ties broken by row order."""
    score = np.asarray(score, dtype=np.float64)
    out = np.empty(len(score), dtype=np.float64)
    out[np.argsort(score, kind="stable")] = np.arange(1, len(score) + 1, dtype=np.float64)
    return out / max(1, len(score))


def rank_mean(*scores: np.ndarray) -> np.ndarray:
    """The mean of each score's ranks: an order that neither score's scale dominates."""
    return np.mean([order_ranks(s) for s in scores], axis=0)


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    """``(n,)`` fold of each row: a seeded permutation dealt round-robin (balanced folds)."""
    out = np.empty(n, dtype=np.int64)
    out[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return out


def fit_head(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, num_classes: int,
             iterations: int = ITERATIONS, weight_decay: float = WEIGHT_DECAY) -> torch.nn.Linear:
    """A linear head ``x -> logits`` minimising the ``weight``-weighted mean cross-entropy plus
    ``weight_decay * ||W||²``, from zero (convex: the result does not depend on the start)."""
    head = torch.nn.Linear(x.shape[1], num_classes).to(x.device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    total = weight.sum().clamp_min(1e-12)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (F.cross_entropy(head(x), y, reduction="none") * weight).sum() / total
        loss = loss + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return head


def _normalised(features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return F.normalize(features[rows].float(), dim=1) * SCALE


def _crossfit(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight: np.ndarray,
              seed: int, folds: int, max_fit_rows: int,
              emit: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
    """Fit a head per fold on the other folds (at most ``max_fit_rows`` of them, a seeded
    sample) and hand each held-out chunk's rows and probabilities to ``emit``. Rows are
    normalised a chunk at a time: no second copy of the features."""
    n = len(labels)
    if n < 2 * folds:
        raise ValueError(f"crossfit_probe: expected at least {2 * folds} rows, found {n}")
    y = labels.cpu()
    w = torch.as_tensor(np.asarray(weight, dtype=np.float32))
    fold = fold_of(n, folds, seed)
    rng = np.random.default_rng(seed)
    for f in range(folds):
        fit = np.flatnonzero(fold != f)
        if len(fit) > max_fit_rows:
            fit = np.sort(rng.choice(fit, max_fit_rows, replace=False))
        fit_rows = torch.from_numpy(fit)
        head = fit_head(_normalised(features, fit_rows), y[fit_rows], w[fit_rows], num_classes)
        held = np.flatnonzero(fold == f)
        for i in range(0, len(held), PREDICT_CHUNK):
            rows = torch.from_numpy(held[i:i + PREDICT_CHUNK])
            with torch.no_grad():
                emit(rows, head(_normalised(features, rows)).softmax(1).double())


def crossfit_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   weight: np.ndarray, seed: int = 0, folds: int = FOLDS,
                   max_fit_rows: int = MAX_FIT_ROWS) -> np.ndarray:
    """``(N, C)`` out-of-fold class probabilities: row ``i``'s come from a head fitted on the
    other folds only (with ``weight`` per row), over L2-normalised ``features``."""
    out = np.zeros((len(labels), num_classes), dtype=np.float64)

    def keep(rows: torch.Tensor, probs: torch.Tensor) -> None:
        out[rows.numpy()] = probs.numpy()

    _crossfit(features, labels, num_classes, weight, seed, folds, max_fit_rows, keep)
    return out


def probe_suspicion(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    prior: np.ndarray, verified: np.ndarray, seed: int = 0,
                    max_fit_rows: int = MAX_FIT_ROWS) -> np.ndarray:
    """``(N,)`` ``1 -`` the cross-fitted head's probability of each row's label, the head's
    fitting rows weighted by ``1 - rank(prior)`` (the ranking so far; verified rows weigh 1).
    Only each row's own probability is kept (no ``(N, C)`` table)."""
    weight = 1.0 - order_ranks(prior)
    weight[np.asarray(verified, dtype=bool)] = 1.0
    y = labels.cpu()
    out = np.zeros(len(y), dtype=np.float64)

    def given(rows: torch.Tensor, probs: torch.Tensor) -> None:
        out[rows.numpy()] = probs.gather(1, y[rows].view(-1, 1))[:, 0].numpy()

    _crossfit(features, y, num_classes, weight, seed, FOLDS, max_fit_rows, given)
    return np.clip(1.0 - out, 0.0, 1.0)
