"""Two linear heads cross-fitted on the final model's features: each row scored by heads that
did not see its label.

The final network has fitted every training label, the wrong ones included, so its own
probability of a row's label is partly memory of that label. A linear head refitted on the
frozen features of the other folds cannot remember the row: its probability of the label says
how well the label fits where the image lies among the other images of that class. This is
cross-fitting (as in cleanlab's out-of-sample probabilities) at the cost of a few logistic
regressions instead of K trainings; the features themselves were still trained on every label.

* The **plain head** (column ``probe_suspicion``): ``1 - p(given)`` of a multinomial logistic
  regression on the other folds.
* The **corrected head** (``probe_corrected_suspicion``): under a class-level flip (30% of one
  class given as another) a plain head learns the flip as part of the class boundary and stops
  seeing it. This head models the given label as the true class passed through a transition
  matrix ``T[true, given]`` (forward loss correction, Patrini et al. 2017, "Making deep neural
  networks robust to label noise: a loss correction approach"): it fits ``p(given | x) =
  sum_t q(t | x) T[t, given]``, so the flip lives in ``T`` and ``q`` keeps the clean boundary.
  A row is scored by Bayes' posterior that its label is wrong, ``1 - q(g) T[g, g] / sum_t q(t)
  T[t, g]``. ``T`` is not given: it starts from the confident joint of the plain head's
  out-of-fold probabilities (Northcutt et al. 2021, as cleanlab counts it) and is refined by
  :data:`EM_ROUNDS` rounds of EM (fit the corrected heads with ``T``; ``T[:, g]`` becomes the
  sum of the rows given ``g`` of the posteriors ``q(t | x) T[t, g]``, normalised). Verified
  rows are right by definition: their loss is the plain one and they do not count towards
  ``T``.

Measured on CIFAR-10 (docs/benchmarks.md, "Two cross-fitted heads"): the corrected head alone
ranks a class-level flip far better than anything else in the run (0.84-0.86 AUROC against
0.75) and is worse than the plain head under instance-dependent and uniform noise, where ``T``
absorbs confusions of the features. :class:`HeadScores` also carries each head's mean
out-of-fold negative log-likelihood of the unverified rows' given labels; ``auto`` lets the
corrected head into its ranking only where it is the lower (its noise model explains labels
it did not see better than the plain head). Pure functions of arrays; ``auto`` calls
:func:`head_suspicions` after training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
#: L-BFGS iterations per fold (on 2,400 CIFAR-10 rows 50 gave the ranking of 200 to 0.001
#: AUROC, in half the time of 100).
ITERATIONS = 50
#: Fewer rows and each fold's head has too little to fit: ``auto`` ranks without the heads.
MIN_ROWS = 2 * FOLDS
#: At most this many rows fit each fold's head, a seeded sample of the other folds: the cost
#: stays bounded at a million rows, and 200,000 rows are plenty for a linear head.
MAX_FIT_ROWS = 200_000
#: Held-out rows scored (and normalised) at a time.
PREDICT_CHUNK = 65_536
#: L-BFGS iterations of a corrected head, which starts from the same fold's previous head
#: (the plain one, then the last round's) rather than from zero.
WARM_ITERATIONS = 20
#: EM rounds refining the transition matrix after the confident joint's start (the measured
#: setting; each round is one cross-fit of the corrected head).
EM_ROUNDS = 2
#: Floor added to every entry of ``T`` before its rows are normalised: no transition is
#: impossible, so every log-likelihood stays finite.
T_FLOOR = 1e-4


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


def noisy_log_likelihood(logits: torch.Tensor, given: torch.Tensor, transition: torch.Tensor,
                         clean: torch.Tensor | None = None) -> torch.Tensor:
    """``(N,)`` ``log p(given | x) = log sum_t softmax(logits)_t T[t, given]``; rows marked
    ``clean`` (verified) use the identity: ``log softmax(logits)_given``."""
    log_q = logits.float().log_softmax(1)
    log_t = transition.log()[:, given].T  # (N, C): log T[t, g_i]
    if clean is not None and bool(clean.any()):
        eye = torch.full_like(log_t[clean], float("-inf"))
        eye.scatter_(1, given[clean].view(-1, 1), 0.0)
        log_t = log_t.clone()
        log_t[clean] = eye
    return torch.logsumexp(log_q + log_t, dim=1)


def posterior_given(q: torch.Tensor, given: torch.Tensor, transition: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` ``P(true = t | x, given)`` ∝ ``q(t | x) T[t, given]``: Bayes' rule."""
    joint = q.double() * transition.double()[:, given].T
    return joint / joint.sum(1, keepdim=True).clamp_min(1e-300)


def transition_from_joint(joint: np.ndarray) -> np.ndarray:
    """``T[true, given]``: the rows of a joint count table normalised, with :data:`T_FLOOR`."""
    t = np.asarray(joint, dtype=np.float64) + T_FLOOR
    return t / t.sum(1, keepdims=True)


def fit_head(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, num_classes: int,
             iterations: int = ITERATIONS, weight_decay: float = WEIGHT_DECAY,
             transition: torch.Tensor | None = None,
             clean: torch.Tensor | None = None,
             start: torch.nn.Linear | None = None) -> torch.nn.Linear:
    """A linear head ``x -> logits`` minimising the ``weight``-weighted mean negative
    log-likelihood of ``y`` plus ``weight_decay * ||W||²``, from ``start``'s weights (zero
    without one). Without ``transition`` the likelihood is the softmax's (convex: the result
    does not depend on the start); with it, ``p(y | x) = sum_t softmax_t T[t, y]`` (forward
    correction; ``clean`` rows use the identity)."""
    head = torch.nn.Linear(x.shape[1], num_classes).to(x.device)
    with torch.no_grad():
        head.weight.copy_(start.weight if start is not None else torch.zeros_like(head.weight))
        head.bias.copy_(start.bias if start is not None else torch.zeros_like(head.bias))
    total = weight.sum().clamp_min(1e-12)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = head(x)
        if transition is None:
            nll = F.cross_entropy(logits, y, reduction="none")
        else:
            nll = -noisy_log_likelihood(logits, y, transition, clean)
        loss = (nll * weight).sum() / total + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return head


def _normalised(features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return F.normalize(features[rows].float(), dim=1) * SCALE


def _fit_folds(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
               weight: np.ndarray, seed: int, folds: int, max_fit_rows: int,
               transition: np.ndarray | None = None, clean: np.ndarray | None = None,
               starts: list[torch.nn.Linear] | None = None,
               iterations: int = ITERATIONS) -> tuple[np.ndarray, list[torch.nn.Linear]]:
    """Each row's fold, and per fold a head fitted on the other folds (at most
    ``max_fit_rows`` of them, a seeded sample). ``transition`` (and ``clean``) make the heads
    forward-corrected."""
    n = len(labels)
    if n < 2 * folds:
        raise ValueError(f"crossfit_probe: expected at least {2 * folds} rows, found {n}")
    y = labels.cpu()
    w = torch.as_tensor(np.asarray(weight, dtype=np.float32))
    t = None if transition is None else torch.as_tensor(transition, dtype=torch.float32)
    ok = torch.zeros(n, dtype=torch.bool) if clean is None else torch.from_numpy(np.array(clean, dtype=bool))
    fold = fold_of(n, folds, seed)
    rng = np.random.default_rng(seed)
    heads = []
    for f in range(folds):
        fit = np.flatnonzero(fold != f)
        if len(fit) > max_fit_rows:
            fit = np.sort(rng.choice(fit, max_fit_rows, replace=False))
        rows = torch.from_numpy(fit)
        heads.append(fit_head(_normalised(features, rows), y[rows], w[rows], num_classes,
                              iterations=iterations, transition=t,
                              clean=None if t is None else ok[rows],
                              start=None if starts is None else starts[f]))
    return fold, heads


def _held_out(features: torch.Tensor, fold: np.ndarray, heads: list[torch.nn.Linear],
              emit: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
    """Hand each held-out chunk's rows and its fold head's class probabilities (``q``, the
    softmax) to ``emit``. Rows are normalised a chunk at a time: no second copy of the
    features."""
    for f, head in enumerate(heads):
        held = np.flatnonzero(fold == f)
        for i in range(0, len(held), PREDICT_CHUNK):
            rows = torch.from_numpy(held[i:i + PREDICT_CHUNK])
            with torch.no_grad():
                emit(rows, head(_normalised(features, rows)).softmax(1).double())


def _crossfit(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight: np.ndarray,
              seed: int, folds: int, max_fit_rows: int,
              emit: Callable[[torch.Tensor, torch.Tensor], None],
              transition: np.ndarray | None = None, clean: np.ndarray | None = None) -> None:
    """:func:`_fit_folds`, then :func:`_held_out`."""
    fold, heads = _fit_folds(features, labels, num_classes, weight, seed, folds, max_fit_rows,
                             transition, clean)
    _held_out(features, fold, heads, emit)


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


@dataclass(frozen=True)
class HeadScores:
    """:func:`head_suspicions`' result: both heads' ``(N,)`` suspicions and the estimated
    ``(C, C)`` transition matrix ``T[true, given]`` of the unverified rows."""

    plain: np.ndarray
    corrected: np.ndarray
    transition: np.ndarray
    plain_nll: float = float("nan")
    corrected_nll: float = float("nan")


def head_suspicions(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    verified: np.ndarray, seed: int = 0, rounds: int = EM_ROUNDS,
                    max_fit_rows: int = MAX_FIT_ROWS, prior: np.ndarray | None = None) -> HeadScores:
    """The plain head's ``1 - p(given)`` and the corrected head's posterior that the label is
    wrong, both out of fold (see the module's docstring). Memory: ``O(N + C²)`` beyond the
    features; each pass over the held-out rows keeps only what it sums or each row's own
    value. ``rounds`` EM rounds (at least one) refine ``T`` before the corrected heads score.

    ``prior`` (a ranking so far, most suspicious highest): the plain head that is returned
    fits its rows weighted by ``1 - rank(prior)`` (verified rows 1), so the rows the ranking
    already suspects do not teach it; ``T``'s start and ``plain_nll`` still come from the
    unweighted head. For features the run did not train (vectors, a frozen encoder) the
    network is itself a linear head on them, and an unweighted head refitted out of fold
    ranks as the training loss does (CIFAR-10 embeddings: 0.742-0.949 against 0.735-0.950);
    weighted, it ranked 0.853-0.867 (docs/benchmarks.md, "Two cross-fitted heads")."""
    y = labels.cpu()
    n, c = len(y), num_classes
    clean = np.asarray(verified, dtype=bool)
    free = torch.from_numpy(~clean)
    ones = np.ones(n)
    plain = np.zeros(n, dtype=np.float64)
    # Pass 1: the plain head; each row's own probability, and per class the sum of p(c) over
    # the unverified rows given c (the confident joint's thresholds).
    sums = np.zeros(c)
    nll = {"plain": 0.0, "corrected": 0.0}

    def first(rows: torch.Tensor, q: torch.Tensor) -> None:
        g = y[rows]
        p_given = q.gather(1, g.view(-1, 1))[:, 0]
        plain[rows.numpy()] = p_given.numpy()
        keep = free[rows]
        np.add.at(sums, g[keep].numpy(), p_given[keep].numpy())
        nll["plain"] -= float(p_given[keep].clamp_min(1e-12).log().sum())

    fold, heads = _fit_folds(features, y, c, ones, seed, FOLDS, max_fit_rows)
    _held_out(features, fold, heads, first)
    count = np.bincount(y[free].numpy(), minlength=c)
    threshold = np.where(count > 0, sums / np.maximum(count, 1), 1.0)
    # Pass 2, the same heads: the confident joint (Northcutt et al. 2021, as cleanlab counts
    # it), a chunk at a time. A row given g counts towards the most likely class among those
    # whose probability reaches the class's threshold; each column is then scaled to the
    # number of rows given g.
    joint = np.zeros((c, c))

    def second(rows: torch.Tensor, q: torch.Tensor) -> None:
        keep = free[rows]
        if not bool(keep.any()):
            return
        p = q[keep].numpy()
        g = y[rows][keep].numpy()
        above = p >= threshold[None, :]
        best = np.where(above, p, -1.0).argmax(1)
        hit = above.any(1)
        np.add.at(joint, (best[hit], g[hit]), 1.0)

    _held_out(features, fold, heads, second)
    counted = joint.sum(0)
    joint *= np.where(counted > 0, count / np.maximum(counted, 1), 0.0)[None, :]
    transition = transition_from_joint(joint)
    # EM: the corrected heads under T; T[:, g] <- the summed posteriors of the rows given g.
    # The last round's heads then score under the T their round produced (a held-out pass,
    # no further fit).
    for _ in range(max(1, rounds)):
        expected = np.zeros((c, c))
        t_now = torch.as_tensor(transition)

        def e_step(rows: torch.Tensor, q: torch.Tensor, t_now: torch.Tensor = t_now,
                   expected: np.ndarray = expected) -> None:
            keep = free[rows]
            g = y[rows][keep]
            post = posterior_given(q[keep], g, t_now).numpy()
            np.add.at(expected.T, g.numpy(), post)  # expected[:, g] += P(true = . | x, g)

        fold, heads = _fit_folds(features, y, c, ones, seed, FOLDS, max_fit_rows, transition, clean,
                                 starts=heads, iterations=WARM_ITERATIONS)
        _held_out(features, fold, heads, e_step)
        transition = transition_from_joint(expected)
    corrected = np.zeros(n, dtype=np.float64)
    t_final = torch.as_tensor(transition)

    def score(rows: torch.Tensor, q: torch.Tensor) -> None:
        g = y[rows]
        post = posterior_given(q, g, t_final).gather(1, g.view(-1, 1))[:, 0]
        corrected[rows.numpy()] = 1.0 - post.numpy()
        keep = free[rows]
        p_given = (q[keep] * t_final.double()[:, g[keep]].T).sum(1)
        nll["corrected"] -= float(p_given.clamp_min(1e-12).log().sum())

    _held_out(features, fold, heads, score)
    if prior is not None:
        weight = 1.0 - order_ranks(prior)
        weight[clean] = 1.0

        def weighted(rows: torch.Tensor, q: torch.Tensor) -> None:
            plain[rows.numpy()] = q.gather(1, y[rows].view(-1, 1))[:, 0].numpy()

        fold, heads = _fit_folds(features, y, c, weight, seed, FOLDS, max_fit_rows)
        _held_out(features, fold, heads, weighted)
    m = max(1, int(free.sum()))
    return HeadScores(np.clip(1.0 - plain, 0.0, 1.0), np.clip(corrected, 0.0, 1.0), transition,
                      nll["plain"] / m, nll["corrected"] / m)
