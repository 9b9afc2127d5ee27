"""The cross-fitted head (labelclean.methods.probe): out of fold, weighted, ranked."""

import numpy as np
import pytest
import torch

from labelclean.methods.probe import crossfit_probe, fold_of, order_ranks, probe_suspicion, rank_mean


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


def test_weights_keep_a_class_level_flip_from_teaching_the_head():
    """30% of class 0 given as class 1: unweighted, the head learns the flip and doubts those
    rows less; weighted by a ranking that already suspects them, it doubts them more."""
    x, truth = _clusters(n_per=100)
    given = truth.clone()
    flipped = np.zeros(len(given), dtype=bool)
    flipped[np.where(truth.numpy() == 0)[0][:30]] = True
    given[torch.from_numpy(flipped)] = 1
    verified = np.zeros(len(given), dtype=bool)
    rows = np.arange(len(given))
    flat = 1 - crossfit_probe(x, given, 3, np.ones(len(given)))[rows, given.numpy()]
    prior = flipped + np.random.default_rng(0).random(len(given)) * 0.5  # suspects the flip
    weighted = probe_suspicion(x, given, 3, prior, verified)
    assert weighted[flipped].mean() > flat[flipped].mean() + 0.1
    assert weighted[~flipped].mean() < 0.2


def test_too_few_rows_is_refused():
    with pytest.raises(ValueError, match="at least 8 rows"):
        crossfit_probe(torch.randn(5, 4), torch.zeros(5, dtype=torch.long), 2, np.ones(5))
