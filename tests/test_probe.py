"""The cross-fitted heads (labelclean.methods.probe): out of fold, plain and noise-corrected."""

import numpy as np
import pytest
import torch

from labelclean.methods.probe import (
    crossfit_probe,
    fold_of,
    head_suspicions,
    noisy_log_likelihood,
    order_ranks,
    posterior_given,
    rank_mean,
)


def _clusters(n_per: int = 60, c: int = 3, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g) * 3
    y = torch.arange(c).repeat_interleave(n_per)
    return centres[y] + torch.randn(len(y), d, generator=g), y


def test_order_ranks_and_rank_mean():
    assert order_ranks(np.array([0.2, 0.9, 0.5, 0.1])).tolist() == [0.5, 1.0, 0.75, 0.25]
    # One score's scale does not dominate: a huge gap in one counts as one rank step.
    mean = rank_mean(np.array([0.0, 1000.0, 1.0]), np.array([0.3, 0.1, 0.2]))
    assert np.allclose(mean, [(1 / 3 + 1) / 2, (1 + 1 / 3) / 2, (2 / 3 + 2 / 3) / 2])


def test_folds_are_balanced_and_seeded():
    f = fold_of(103, 4, seed=3)
    assert sorted(np.bincount(f).tolist()) == [25, 26, 26, 26]
    assert np.array_equal(f, fold_of(103, 4, seed=3))
    assert not np.array_equal(f, fold_of(103, 4, seed=4))


def test_a_rows_probabilities_do_not_see_its_own_label():
    x, y = _clusters()
    w = np.ones(len(y))
    before = crossfit_probe(x, y, 3, w, seed=0)
    changed = y.clone()
    changed[5] = 2  # row 5 (class 0) now claims class 2
    after = crossfit_probe(x, changed, 3, w, seed=0)
    assert np.allclose(before[5], after[5])  # its head never saw its label
    fold = fold_of(len(y), 4, seed=0)
    others = fold != fold[5]
    assert not np.allclose(before[others], after[others])  # the other folds' heads did
    # Out of fold, a wrong label in a clean cluster is plain to see.
    assert after[5, 2] < 0.1 and after[5, 0] > 0.9


def _flip(share: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Four overlapping classes (centres 1 apart in 16 dimensions: hard images near every
    boundary) and ``share`` of class 0's 100 rows given as class 1: a class-level flip."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 16, generator=g)
    truth = torch.arange(4).repeat_interleave(100)
    x = centres[truth] + torch.randn(len(truth), 16, generator=g)
    given = truth.clone()
    flipped = np.zeros(len(given), dtype=bool)
    flipped[np.where(truth.numpy() == 0)[0][:share]] = True
    given[torch.from_numpy(flipped)] = 1
    return x, given, flipped


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = score[positive], score[~positive]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def test_the_corrected_head_sees_a_class_level_flip_that_the_plain_head_learns():
    """40% of class 0 given as class 1 among overlapping classes: the plain head learns the
    flip as part of class 1, and the hard right labels near every boundary look as doubtful
    as the flipped ones; the corrected head puts the flip in T and ranks it apart."""
    x, given, flipped = _flip()
    heads = head_suspicions(x, given, 4, np.zeros(len(given), dtype=bool))
    plain, corrected = _auroc(heads.plain, flipped), _auroc(heads.corrected, flipped)
    assert corrected > 0.95 and corrected > plain + 0.05
    # T found the flip: a large share of class 0 goes to class 1; the other classes stay.
    t = heads.transition
    assert t.shape == (4, 4) and np.allclose(t.sum(1), 1.0)
    assert t[0, 1] > 0.2 and t[0, 1] == t[0, 1:].max()
    assert min(t[1, 1], t[2, 2], t[3, 3]) > 0.75
    # Its noise model predicts the held-out given labels better than the plain head: the
    # gate by which auto lets it join the ranking.
    assert heads.corrected_nll < heads.plain_nll
    rows = np.arange(len(given))
    plain_probs = crossfit_probe(x, given, 4, np.ones(len(given)))[rows, given.numpy()]
    assert np.isclose(heads.plain_nll, -np.log(plain_probs).mean())
    # Without a flip, T stays near the identity.
    clean_x, clean_y = _clusters(n_per=100)
    calm = head_suspicions(clean_x, clean_y, 3, np.zeros(len(clean_y), dtype=bool))
    assert np.diag(calm.transition).min() > 0.9


def test_verified_rows_are_right_by_definition_in_the_corrected_head():
    """A verified row's given label is its true label: it does not count towards T."""
    x, given, flipped = _flip()
    none = head_suspicions(x, given, 4, np.zeros(len(given), dtype=bool))
    verified = flipped.copy()  # every flipped row "verified" as given: no noise left to count
    held = head_suspicions(x, given, 4, verified)
    assert held.transition[0, 1] < 0.5 * none.transition[0, 1]


def test_noisy_likelihood_and_posterior_are_bayes_rule():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    t = torch.tensor([[0.7, 0.3, 0.0], [0.0, 1.0, 0.0], [0.1, 0.0, 0.9]]) + 1e-6
    t = t / t.sum(1, keepdim=True)
    given = torch.tensor([1, 1])
    q = logits.softmax(1)
    want = torch.log((q * t[:, given].T).sum(1))
    assert torch.allclose(noisy_log_likelihood(logits, given, t), want, atol=1e-5)
    # Verified rows: the identity, the plain log-likelihood.
    clean = torch.tensor([True, False])
    got = noisy_log_likelihood(logits, given, t, clean)
    assert torch.allclose(got[0], q[0, 1].log(), atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-5)
    post = posterior_given(q, given, t)
    assert torch.allclose(post.sum(1), torch.ones(2, dtype=torch.float64))
    joint = q[0].double() * t[:, 1].double()
    assert torch.allclose(post[0], joint / joint.sum())


def test_too_few_rows_is_refused():
    with pytest.raises(ValueError, match="at least 8 rows"):
        crossfit_probe(torch.randn(5, 4), torch.zeros(5, dtype=torch.long), 2, np.ones(5))
